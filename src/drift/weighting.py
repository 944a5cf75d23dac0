"""Return-based importance weights: the math of DRIFT. No torch.

A return is written once in plain Python (:func:`trajectory_return`, the readable reference) and
once vectorised with numpy over a whole file (:func:`compute_returns`); the tests hold the two to
1e-12. A weighting scheme is a readable function of one group, ``(returns, solved, params) ->
weights`` (:data:`SCHEMES`); :func:`compute_weights` applies it to every group of a file, through
an optional vectorised twin where one exists (``drift``: a million trajectories in well under a
second; the tests hold it to the per-group function to 1e-12).

KL-regularised RL, max_pi E_pi[R] - beta KL(pi || pi_ref), has the closed-form optimum
pi*(y|x) = pi_ref(y|x) exp(R(x,y)/beta) / Z(x). DRIFT projects pi* onto the policy class with a
forward KL, which on samples y ~ pi_ref is weighted maximum likelihood with weights
``w = exp(R/beta) / Z(x)``. Choices we make where the paper leaves room (say so when you cite):

1. Z(x) is estimated per prompt as the *mean* of exp(R/beta) over its K trajectories, so the
   weights of every prompt average exactly 1. Scheme ``rwr`` (reward-weighted regression) applies
   the same formula with the whole file as one group.
2. The return composes three terms:
   ``R = sum_t gamma^(t-1) r_t - format_penalty * format_errors - lam * (1 - U/N)``
   with U distinct answers (as the verifier reads them, drift.verifiers.ANSWER_KEYS) among the N
   parsable ones (no penalty when N = 0).
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

The training loss itself (weight x token-mean NLL of the last assistant turn) lives in
drift.losses; here we only produce numbers. Parameters have no defaults here: they live in
drift.config (``WeightingOptions``), which builds :class:`WeightingParams`.

Adding a scheme: write ``fn(returns, solved, params) -> weights`` for one group (numpy arrays of
the group's K trajectories; NaN drops a trajectory) and add ``Scheme(fn)`` to :data:`SCHEMES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain
from operator import itemgetter
from typing import Literal

import numpy as np

from drift import DriftError

# -- returns ---------------------------------------------------------------------------------


def discounted_return(rewards: Sequence[float], gamma: float) -> float:
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


def repetition_penalty(answers: Sequence[str | None], lam: float) -> float:
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
    gamma: float,
    lam: float,
    format_penalty: float,
) -> float:
    """``R = sum_t gamma^(t-1) r_t - format_penalty * format_errors - lam * (1 - U/N)``.

    >>> # wrong "70", unparsable, then right "80" at turn 3:
    >>> # 0.9^2 - 0.1 * 1 - 0.5 * (1 - 2/2) = 0.81 - 0.1 = 0.71
    >>> round(trajectory_return([0, 0, 1], ["70", None, "80"], 1, gamma=0.9, lam=0.5, format_penalty=0.1), 12)
    0.71
    """
    return discounted_return(rewards, gamma) - format_penalty * format_errors - repetition_penalty(answers, lam)


# -- weights ---------------------------------------------------------------------------------


def group_weights(returns: Sequence[float], beta: float) -> list[float]:
    """``w_i = exp(R_i/beta) / mean_j exp(R_j/beta)`` over one group, computed stably.

    Shape: ``returns`` has K entries (the K trajectories of one prompt); the result too, with
    ``mean(w) == 1``. This is the readable reference of scheme ``drift``; :func:`grouped_weights`
    does every group of a file at once with numpy, and the tests hold the two to 1e-12.

    >>> # returns 1 and 0 at beta = 1: e/(e+1)*2 and 1/(e+1)*2
    >>> [round(w, 6) for w in group_weights([1.0, 0.0], beta=1.0)]
    [1.462117, 0.537883]
    >>> group_weights([0.3, 0.3, 0.3], beta=0.1)
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


def grouped_weights(returns: np.ndarray, codes: np.ndarray, n_groups: int, beta: float) -> np.ndarray:
    """:func:`group_weights` of every group at once: record i belongs to group ``codes[i]``.

    Shapes: ``returns`` and ``codes`` (ints in 0..n_groups-1) have N entries; so has the result.

    >>> grouped_weights(np.array([1.0, 5.0, 0.0]), np.array([0, 1, 0]), 2, beta=1.0).round(6).tolist()
    [1.462117, 1.0, 0.537883]
    """
    top = np.full(n_groups, -np.inf)
    np.maximum.at(top, codes, returns)
    unnormalised = np.exp((returns - top[codes]) / beta)  # the max-shift: every group's best term is 1
    size = np.bincount(codes, minlength=n_groups)
    mean = np.bincount(codes, weights=unnormalised, minlength=n_groups) / np.maximum(size, 1)
    return unnormalised / mean[codes]


@dataclass(frozen=True)
class WeightingParams:
    """The numbers a scheme needs; built by :meth:`drift.config.WeightingOptions.weighting` (the
    defaults live there)."""

    scheme: str
    beta: float
    gamma: float
    lam: float
    format_penalty: float
    zero_variance: str
    all_fail: str
    clip: float | None

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise DriftError(f"unknown scheme {self.scheme!r}; choose from {sorted(SCHEMES)}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise DriftError(f"beta must be a positive finite number, got {self.beta!r}")
        if not 0 <= self.gamma <= 1:
            raise DriftError(f"gamma must be in [0, 1], got {self.gamma!r}")
        for name in ("lam", "format_penalty"):  # a negative penalty would reward what it penalises
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise DriftError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.zero_variance not in ("keep", "drop"):
            raise DriftError(f"zero_variance must be 'keep' or 'drop', got {self.zero_variance!r}")
        if self.all_fail not in ("keep", "drop"):
            raise DriftError(f"all_fail must be 'keep' or 'drop', got {self.all_fail!r}")
        if self.clip is not None and not self.clip > 0:
            raise DriftError(f"clip must be positive, got {self.clip!r}")


# -- schemes: one readable function per group --------------------------------------------------


def drift_weights(returns: np.ndarray, solved: np.ndarray, params: WeightingParams) -> np.ndarray:
    """``w_i = exp(R_i/beta) / mean_j exp(R_j/beta)`` over the group (:func:`group_weights`)."""
    return np.array(group_weights(returns.tolist(), params.beta))


def sft_weights(returns: np.ndarray, solved: np.ndarray, params: WeightingParams) -> np.ndarray:
    """Every trajectory weighs 1 (plain SFT on the rollouts)."""
    return np.ones(len(returns))


def rft_weights(returns: np.ndarray, solved: np.ndarray, params: WeightingParams) -> np.ndarray:
    """Rejection-sampling fine-tuning: the solved trajectories weigh 1, the rest are dropped (NaN)."""
    return np.where(solved, 1.0, np.nan)


def _drift_all(returns, codes, n_groups, solved, params) -> np.ndarray:
    return grouped_weights(returns, codes, n_groups, params.beta)


def _elementwise(fn):
    """The vectorised twin of a scheme whose weight depends on each trajectory alone."""
    return lambda returns, codes, n_groups, solved, params: fn(returns, solved, params)


@dataclass(frozen=True)
class Scheme:
    """A weighting scheme: its per-group function, what a group is, and an optional fast twin.

    ``group`` is ``"prompt"`` (the K trajectories of one prompt: the Z(x) of DRIFT) or ``"file"``
    (every trajectory at once). ``vectorised(returns, codes, n_groups, solved, params)`` must equal
    applying ``per_group`` group by group (tests/test_weighting.py checks every registered one).
    """

    per_group: Callable[[np.ndarray, np.ndarray, WeightingParams], np.ndarray]
    group: Literal["prompt", "file"] = "prompt"
    vectorised: Callable[..., np.ndarray] | None = None


SCHEMES: dict[str, Scheme] = {
    "drift": Scheme(drift_weights, vectorised=_drift_all),
    "rwr": Scheme(drift_weights, group="file"),  # reward-weighted regression: Z over the whole file
    "sft": Scheme(sft_weights, vectorised=_elementwise(sft_weights)),
    "rft": Scheme(rft_weights, vectorised=_elementwise(rft_weights)),
}
"""name -> :class:`Scheme`; ``drift weight --scheme NAME`` and ``drift rl --algorithm drift`` use it."""


def apply_per_group(
    scheme: Scheme, returns: np.ndarray, codes: np.ndarray, n_groups: int, solved: np.ndarray, params: WeightingParams
) -> np.ndarray:
    """``scheme.per_group`` on each group's slice, written back in file order; shape (N,)."""
    if scheme.group == "file":
        return np.asarray(scheme.per_group(returns, solved, params), dtype=np.float64)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    weights = np.empty(len(returns))
    for idx in np.split(order, bounds) if len(order) else []:
        weights[idx] = scheme.per_group(returns[idx], solved[idx], params)
    return weights


def group_indices(records: Sequence[dict]) -> dict[str, list[int]]:
    """``prompt_id -> [record index, ...]`` in file order."""
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault(rec["prompt_id"], []).append(i)
    return groups


# -- the whole-file math, on columns ---------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """The numbers of N trajectories as arrays (M turns in all), so the math runs in numpy.

    ``codes[i]`` numbers record i's prompt (0..n_groups-1, in order of first appearance);
    ``rewards`` concatenates every record's r_t; ``first_correct_turn`` is 0 for unsolved.
    """

    codes: np.ndarray  # (N,) int
    n_groups: int
    turns: np.ndarray  # (N,) int, T_i
    rewards: np.ndarray  # (M,) float
    answered: np.ndarray  # (N,) int, N_i
    distinct: np.ndarray  # (N,) int, U_i
    format_errors: np.ndarray  # (N,) float
    first_correct_turn: np.ndarray  # (N,) int

    FIELDS = ("prompt_id", "traj_id", "rewards", "answers", "format_errors", "first_correct_turn")
    """The record fields the math reads, in the order :meth:`row` takes them."""

    @staticmethod
    def row(
        prompt_id: str, traj_id: int, rewards: list, answers: list, format_errors: int, first_correct_turn: int | None
    ) -> tuple:
        """What the math needs from one record (its :attr:`FIELDS`): ``(prompt_id, traj_id, rewards,
        N, U, format_errors, first_correct_turn or 0)``, N parsable answers, U of them distinct.

        A reader calls it while the freshly parsed record is still in the CPU cache; the record
        itself can then be dropped.

        >>> Columns.row("p", 3, [0.0, 1.0], ["5", None, "5"], 1, 2)
        ('p', 3, [0.0, 1.0], 2, 1, 1, 2)
        """
        nulls = answers.count(None)
        return (
            prompt_id,
            traj_id,
            rewards,
            len(answers) - nulls,
            len(set(answers)) - (nulls > 0),
            format_errors,
            first_correct_turn or 0,
        )

    @classmethod
    def of(cls, records: Iterable[dict]) -> Columns:
        fields = itemgetter(*cls.FIELDS)
        return cls.from_rows([cls.row(*fields(r)) for r in records])

    @classmethod
    def from_rows(cls, rows: Sequence[tuple]) -> Columns:
        n = len(rows)
        prompt_ids, _, rewards, answered, distinct, format_errors, first = zip(*rows) if rows else ((),) * 7
        number = {p: i for i, p in enumerate(dict.fromkeys(prompt_ids))}
        turns = np.fromiter(map(len, rewards), dtype=np.intp, count=n)

        def ints(values):
            return np.fromiter(values, dtype=np.intp, count=n)

        return cls(
            ints(map(number.__getitem__, prompt_ids)),
            len(number),
            turns,
            np.fromiter(chain.from_iterable(rewards), dtype=np.float64, count=int(turns.sum())),
            ints(answered),
            ints(distinct),
            np.fromiter(format_errors, dtype=np.float64, count=n),
            ints(first),
        )

    def __len__(self) -> int:
        return len(self.codes)


def as_columns(data: Sequence[dict] | Columns) -> Columns:
    return data if isinstance(data, Columns) else Columns.of(data)


def returns_array(cols: Columns, params: WeightingParams) -> np.ndarray:
    """:func:`trajectory_return` of every trajectory at once; shape (N,)."""
    n = len(cols)
    owner = np.repeat(np.arange(n), cols.turns)  # which trajectory each reward belongs to
    turn = np.arange(len(cols.rewards)) - np.repeat(np.cumsum(cols.turns) - cols.turns, cols.turns)  # t - 1
    discounted = np.bincount(owner, weights=cols.rewards * params.gamma**turn, minlength=n)
    answered = np.maximum(cols.answered, 1)
    repetition = params.lam * (1.0 - cols.distinct / answered) * (cols.answered > 0)
    return discounted - params.format_penalty * cols.format_errors - repetition


def compute_returns(records: Sequence[dict] | Columns, params: WeightingParams) -> list[float]:
    """:func:`trajectory_return` of every record, vectorised. The tests hold it to the readable
    reference to 1e-12."""
    return returns_array(as_columns(records), params).tolist()


def compute_weights(
    records: Sequence[dict] | Columns, params: WeightingParams
) -> tuple[list[float], list[float | None]]:
    """Returns and weights of ``records`` under ``params``; a ``None`` weight drops the record."""
    cols = as_columns(records)
    returns = returns_array(cols, params)
    codes, n_groups, solved = cols.codes, cols.n_groups, cols.first_correct_turn > 0
    keep = np.ones(len(cols), dtype=bool)
    if params.zero_variance == "drop":
        keep &= ~zero_variance_groups(returns, codes, n_groups)[codes]
    if params.all_fail == "drop":
        keep &= np.bincount(codes, weights=solved, minlength=n_groups)[codes] > 0
    scheme = SCHEMES[params.scheme]
    apply = scheme.vectorised or partial(apply_per_group, scheme)
    if keep.all():
        weights = apply(returns, codes, n_groups, solved, params)
    else:
        weights = np.full(len(cols), np.nan)
        weights[keep] = apply(returns[keep], codes[keep], n_groups, solved[keep], params)
    if params.clip is not None:
        weights = np.minimum(weights, params.clip)  # NaN (dropped) stays NaN
    listed = weights.tolist()
    for i in np.flatnonzero(np.isnan(weights)).tolist():
        listed[i] = None
    return returns.tolist(), listed


def zero_variance_groups(returns: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group: are all its returns equal?"""
    top, bottom = np.full(n_groups, -np.inf), np.full(n_groups, np.inf)
    np.maximum.at(top, codes, returns)
    np.minimum.at(bottom, codes, returns)
    return top == bottom
