"""Return-based importance weights: the math of DRIFT. Pure Python, no torch.

KL-regularised RL, max_pi E_pi[R] - beta KL(pi || pi_ref), has the closed-form optimum
pi*(y|x) = pi_ref(y|x) exp(R(x,y)/beta) / Z(x). DRIFT projects pi* onto the policy class with a
forward KL, which on samples y ~ pi_ref is weighted maximum likelihood with weights
``w = exp(R/beta) / Z(x)``. Choices we make where the paper leaves room (say so when you cite):

1. Z(x) is estimated per prompt as the *mean* of exp(R/beta) over its K trajectories, so the
   weights of every prompt average exactly 1 (``scope="group"``). ``scope="global"`` normalises
   over the whole file instead (reward-weighted regression, scheme ``rwr``).
2. The return composes three terms:
   ``R = sum_t gamma^(t-1) r_t - format_penalty * format_errors - lam * (1 - U/N)``
   with U distinct normalised answers among the N parsable ones (no penalty when N = 0).
3. exp is computed after subtracting the group maximum, so |R/beta| up to 1e6 neither
   overflows nor turns into NaN; weights of hopeless trajectories underflow to exactly 0.
4. Groups whose returns are all equal (``zero-variance``: every trajectory fails, or every one
   succeeds the same way) get weight 1 everywhere under ``drift``, exactly as in the reference
   code. ``zero_variance="drop"`` removes them instead, so the model never imitates a prompt's
   wrong answers when no better alternative was sampled.
5. ``all_fail="drop"`` removes the groups where no trajectory succeeds (their returns may still
   differ through the penalties, so they are not zero-variance): with no correct answer to
   prefer, the weights would only choose which wrong answers to imitate.
6. ``clip`` caps weights after normalisation and does not renormalise (the cap is a variance
   control, not part of the estimator).

The training loss itself (weight x token-mean NLL of the last assistant turn) lives in the
trainer; here we only produce numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import mul
from dataclasses import dataclass

from drift import DriftError
from drift.metrics import cumulative_accuracy

# -- returns ---------------------------------------------------------------------------------


def discounted_return(rewards: Sequence[float], gamma: float = 0.9) -> float:
    """``sum_t gamma^(t-1) r_t`` with 1-based turns t.

    >>> discounted_return([0.0, 0.0, 1.0], gamma=0.9)   # solved at turn 3: 0.9^2
    0.81
    >>> discounted_return([1.0], gamma=0.9)
    1.0
    """
    total, discount = 0.0, 1.0
    for r in rewards:
        total += discount * r
        discount *= gamma
    return total


def repetition_penalty(answers: Sequence[str | None], lam: float = 0.5) -> float:
    """``lam * (1 - U/N)``: N parsable answers (nulls ignored), U of them distinct; 0 when N = 0.

    >>> repetition_penalty(["135", "135", "126", "126", "126"], lam=0.5)   # 0.5 * (1 - 2/5)
    0.3
    >>> repetition_penalty([None, None], lam=0.5)
    0.0
    """
    given = [a for a in answers if a is not None]
    if not given:
        return 0.0
    return lam * (1.0 - len(set(given)) / len(given))


def trajectory_return(
    rewards: Sequence[float],
    answers: Sequence[str | None],
    format_errors: int,
    *,
    gamma: float = 0.9,
    lam: float = 0.5,
    format_penalty: float = 0.1,
) -> float:
    """``R = sum_t gamma^(t-1) r_t - format_penalty * format_errors - lam * (1 - U/N)``.

    >>> # wrong "70", unparsable, then right "80" at turn 3:
    >>> # 0.9^2 - 0.1 * 1 - 0.5 * (1 - 2/2) = 0.81 - 0.1 = 0.71
    >>> round(trajectory_return([0, 0, 1], ["70", None, "80"], 1), 12)
    0.71
    """
    return (
        discounted_return(rewards, gamma)
        - format_penalty * format_errors
        - repetition_penalty(answers, lam)
    )


# -- weights ---------------------------------------------------------------------------------


def group_weights(returns: Sequence[float], beta: float = 0.1) -> list[float]:
    """``w_i = exp(R_i/beta) / mean_j exp(R_j/beta)`` over one group, computed stably.

    Shape: ``returns`` has K entries (the K trajectories of one prompt); the result too, with
    ``mean(w) == 1``.

    >>> # returns 1 and 0 at beta = 1: e/(e+1)*2 and 1/(e+1)*2
    >>> [round(w, 6) for w in group_weights([1.0, 0.0], beta=1.0)]
    [1.462117, 0.537883]
    >>> group_weights([0.3, 0.3, 0.3])
    [1.0, 1.0, 1.0]
    """
    if not beta > 0 or math.isinf(beta):
        raise DriftError(f"beta must be a positive finite number, got {beta!r}")
    if not returns:
        return []
    top = max(returns)
    unnormalised = [math.exp((r - top) / beta) for r in returns]
    mean = math.fsum(unnormalised) / len(unnormalised)  # >= 1/K: the best term is exp(0) = 1
    return [u / mean for u in unnormalised]


def _drift(returns, groups, solved, cfg) -> list[float]:
    if cfg.scope == "global":
        return group_weights(returns, cfg.beta)
    weights = [0.0] * len(returns)
    for idx in groups.values():
        for i, w in zip(idx, group_weights([returns[i] for i in idx], cfg.beta)):
            weights[i] = w
    return weights


def _rwr(returns, groups, solved, cfg):
    return group_weights(returns, cfg.beta)


def _sft(returns, groups, solved, cfg):
    return [1.0] * len(returns)


def _rft(returns, groups, solved, cfg):
    return [1.0 if s else None for s in solved]


SCHEMES = {"drift": _drift, "rwr": _rwr, "sft": _sft, "rft": _rft}
"""name -> ``fn(returns, groups, solved, cfg) -> weights`` (``None`` drops a record)."""


@dataclass(frozen=True)
class WeightingParams:
    """The numbers a scheme needs (the CLI's :class:`drift.config.WeightConfig` has them all)."""

    scheme: str = "drift"
    beta: float = 0.1
    gamma: float = 0.9
    lam: float = 0.5
    format_penalty: float = 0.1
    scope: str = "group"
    zero_variance: str = "keep"
    all_fail: str = "keep"
    clip: float | None = None

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise DriftError(f"unknown scheme {self.scheme!r}; choose from {sorted(SCHEMES)}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise DriftError(f"beta must be a positive finite number, got {self.beta!r}")
        if not 0 <= self.gamma <= 1:
            raise DriftError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if self.scope not in ("group", "global"):
            raise DriftError(f"scope must be 'group' or 'global', got {self.scope!r}")
        if self.zero_variance not in ("keep", "drop"):
            raise DriftError(f"zero_variance must be 'keep' or 'drop', got {self.zero_variance!r}")
        if self.all_fail not in ("keep", "drop"):
            raise DriftError(f"all_fail must be 'keep' or 'drop', got {self.all_fail!r}")
        if self.clip is not None and not self.clip > 0:
            raise DriftError(f"clip must be positive, got {self.clip!r}")


def group_indices(records: Sequence[dict]) -> dict[str, list[int]]:
    """``prompt_id -> [record index, ...]`` in file order."""
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault(rec["prompt_id"], []).append(i)
    return groups


def compute_returns(records: Sequence[dict], params: WeightingParams) -> list[float]:
    """:func:`trajectory_return` of every record, inlined for speed (a million records a second).

    The tests check it against :func:`trajectory_return`, the readable reference, to 1e-12.
    """
    gamma, lam, penalty = params.gamma, params.lam, params.format_penalty
    powers = [1.0]
    returns = []
    for r in records:
        rewards, answers = r["rewards"], r["answers"]
        while len(powers) < len(rewards):
            powers.append(powers[-1] * gamma)
        given = [a for a in answers if a is not None]
        repetition = lam * (1.0 - len(set(given)) / len(given)) if given else 0.0
        returns.append(sum(map(mul, rewards, powers)) - penalty * r["format_errors"] - repetition)
    return returns


def compute_weights(records: Sequence[dict], params: WeightingParams) -> tuple[list[float], list[float | None]]:
    """Returns and weights of ``records`` under ``params``; a ``None`` weight drops the record."""
    returns = compute_returns(records, params)
    if params.zero_variance == params.all_fail == "keep" and params.clip is None:
        groups = group_indices(records)
        solved = [r["first_correct_turn"] is not None for r in records]
        return returns, SCHEMES[params.scheme](returns, groups, solved, params)
    groups = group_indices(records)
    keep = [True] * len(records)
    for idx in groups.values():
        zero_variance = max(returns[i] for i in idx) == min(returns[i] for i in idx)
        all_fail = all(records[i]["first_correct_turn"] is None for i in idx)
        if (params.zero_variance == "drop" and zero_variance) or (params.all_fail == "drop" and all_fail):
            for i in idx:
                keep[i] = False
    kept = [i for i in range(len(records)) if keep[i]]
    sub_returns = [returns[i] for i in kept]
    sub_groups = group_indices([records[i] for i in kept])
    solved = [records[i]["first_correct_turn"] is not None for i in kept]
    sub_weights = SCHEMES[params.scheme](sub_returns, sub_groups, solved, params)
    weights: list[float | None] = [None] * len(records)
    for i, w in zip(kept, sub_weights):
        weights[i] = w if w is None or params.clip is None else min(w, params.clip)
    return returns, weights


# -- diagnostics -----------------------------------------------------------------------------


def kish_ess(weights: Sequence[float]) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2`` (0 for no or all-zero weights).

    >>> kish_ess([1.0, 1.0, 1.0, 1.0])
    4.0
    >>> kish_ess([4.0, 0.0, 0.0, 0.0])
    1.0
    """
    s2 = math.fsum(w * w for w in weights)
    return math.fsum(weights) ** 2 / s2 if s2 > 0 else 0.0


def quantile(values: Sequence[float], q: float, *, presorted: bool = False) -> float:
    """Linear-interpolation quantile of a non-empty sequence (numpy's default method).

    >>> quantile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.5
    """
    xs = values if presorted else sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def diagnostics(records: Sequence[dict], returns: Sequence[float], weights: Sequence[float | None]) -> dict:
    """Health of a weighting: how many samples it effectively keeps, and where its mass sits.

    ``ess`` is Kish's over the kept records, ``ess_ratio`` that divided by their number,
    ``group_ess_ratio`` the mean over prompts of ESS_g / K_g. ``success_by_turn[t]`` is the share of
    trajectories solved at or before turn t.
    """
    groups = group_indices(records)
    kept = [w for w in weights if w is not None]
    ordered = sorted(kept)
    ess = kish_ess(kept)
    group_kinds = {"all_fail": 0, "all_pass": 0, "mixed": 0}
    zero_variance = 0
    group_ess = []
    for idx in groups.values():
        solved = [records[i]["first_correct_turn"] is not None for i in idx]
        kind = "all_pass" if all(solved) else "all_fail" if not any(solved) else "mixed"
        group_kinds[kind] += 1
        zero_variance += max(returns[i] for i in idx) == min(returns[i] for i in idx)
        ws = [weights[i] for i in idx if weights[i] is not None]
        if ws:
            group_ess.append(kish_ess(ws) / len(ws))
    horizon = max((len(r["correct"]) for r in records), default=0)
    n_groups = max(len(groups), 1)
    return {
        "records": len(records),
        "kept": len(kept),
        "groups": len(groups),
        "all_fail_groups": group_kinds["all_fail"] / n_groups,
        "all_pass_groups": group_kinds["all_pass"] / n_groups,
        "mixed_groups": group_kinds["mixed"] / n_groups,
        "zero_variance_groups": zero_variance / n_groups,
        "mean_return": math.fsum(returns) / len(returns) if returns else 0.0,
        "ess": ess,
        "ess_ratio": ess / len(kept) if kept else 0.0,
        "group_ess_ratio": math.fsum(group_ess) / len(group_ess) if group_ess else 0.0,
        "weight_p50": quantile(ordered, 0.5, presorted=True) if kept else 0.0,
        "weight_p90": quantile(ordered, 0.9, presorted=True) if kept else 0.0,
        "weight_p99": quantile(ordered, 0.99, presorted=True) if kept else 0.0,
        "weight_max": max(kept, default=0.0),
        "success_by_turn": {str(t): a for t, a in cumulative_accuracy(records, horizon).items()} if records else {},
    }
