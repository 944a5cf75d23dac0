"""drift rl's algorithms: how a round's trajectories become returns and per-trajectory loss
coefficients, and how a round is kept.

============  =====================================================================  ==========
name          coefficient of trajectory i in its prompt's group g                    column
============  =====================================================================  ==========
``grpo``      A_i = (R_i - mean_g R) / std_g R (population std; 0 if no spread)      advantage
``drift``     w_i = DRIFT's weight of i among the round's records (drift weight)      weight
============  =====================================================================  ==========

``trl-grpo`` is not a round of drift rl's loop but a whole run of TRL's trainer (:data:`RUNNERS`).
Adding an algorithm: a function ``(records, cfg) -> (returns, coefficients)`` and a line in
:data:`ALGORITHMS`; ``--algorithm`` accepts it from then on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drift.weighting import compute_returns, compute_weights, group_indices


def group_advantages(
    returns: list[float], groups: dict[str, list[int]], normalize_std: bool = True, eps: float = 1e-6
) -> list[float]:
    """``A_i = R_i - mean_g R`` (``/ std_g R`` when ``normalize_std``), per prompt group g.

    >>> # group of 4 returns (1, 0, 0, 0): mean 0.25, population std sqrt(3)/4 = 0.4330
    >>> [round(a, 3) for a in group_advantages([1.0, 0.0, 0.0, 0.0], {"p": [0, 1, 2, 3]})]
    [1.732, -0.577, -0.577, -0.577]
    >>> group_advantages([0.5, 0.5], {"p": [0, 1]})       # no spread: no signal
    [0.0, 0.0]
    """
    adv = [0.0] * len(returns)
    for idx in groups.values():
        values = [returns[i] for i in idx]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        for i in idx:
            centred = returns[i] - mean
            adv[i] = 0.0 if std < eps else (centred / (std + eps) if normalize_std else centred)
    return adv


@dataclass(frozen=True)
class Algorithm:
    """One ``--algorithm`` of drift rl's loop: how a round's records become returns and loss coefficients.

    ``coefficients(records, cfg) -> (returns, coefficients)``, a coefficient ``None`` dropping its
    trajectory; ``column``, the coefficient's name in ``rounds/round-N.jsonl``; ``on_policy``: its
    gradient takes the sampling policy's log-probabilities as they are, so it samples at
    temperature 1 and top_p 1 and, with more than one update a round, uses PPO's clipped ratio to
    the sampling policy; ``dropped``: what ``rounds/`` writes for a dropped trajectory's
    coefficient (``0.0`` as drift weight writes a weight, or ``None``: null)."""

    coefficients: Callable[[list[dict], Any], tuple[list[float], list[float | None]]]
    column: str
    on_policy: bool
    dropped: float | None = None


def _grpo_coefficients(records: list[dict], cfg) -> tuple[list[float], list[float | None]]:
    returns = compute_returns(records, cfg.weighting())
    return returns, list(group_advantages(returns, group_indices(records), cfg.normalize_std))


def _drift_coefficients(records: list[dict], cfg) -> tuple[list[float], list[float | None]]:
    return compute_weights(records, cfg.weighting())


ALGORITHMS: dict[str, Algorithm] = {
    "grpo": Algorithm(_grpo_coefficients, column="advantage", on_policy=True),
    "drift": Algorithm(_drift_coefficients, column="weight", on_policy=False, dropped=0.0),
}
"""The algorithms of drift rl's own loop (``--algorithm`` reads its choices here and in :data:`RUNNERS`):
group-relative advantages, or exactly the weights ``drift weight`` would give the round's records
with the same options (iterated DRIFT: scheme, beta, all-fail / zero-variance drops, clip)."""


@dataclass(frozen=True)
class Runner:
    """An ``--algorithm`` that runs the whole of ``drift rl`` its own way, not drift rl's loop:
    ``run(cfg) -> summary`` (importing its trainer only when called); ``runs_whole``: its trainer
    forwards every example whole (no shared prefixes), so its compute as run is the nominal one
    even in counts that predate the as-run counters (drift.study.results)."""

    run: Callable[[Any], dict]
    runs_whole: bool


def _trl_grpo(cfg) -> dict:
    from drift.trl_grpo import run_trl_grpo

    return run_trl_grpo(cfg)


RUNNERS: dict[str, Runner] = {"trl-grpo": Runner(_trl_grpo, runs_whole=True)}
"""Whole-run algorithms by name: TRL's own GRPOTrainer (drift.trl_grpo)."""


def algorithm_names() -> list[str]:
    """``--algorithm``'s choices: this loop's, then the whole-run ones."""
    return [*ALGORITHMS, *RUNNERS]


def round_coefficients(records: list[dict], cfg) -> tuple[list[float], list[float | None]]:
    """Returns and per-trajectory loss coefficients of one round, by ``cfg.algorithm`` (:data:`ALGORITHMS`)."""
    return ALGORITHMS[cfg.algorithm].coefficients(records, cfg)


def write_round(path: Path, records: list[dict], returns: list[float], coef: list, algorithm: str) -> None:
    """What a round sampled, as drift weight writes it (``return``, and the coefficient it trained
    with under the algorithm's column, :attr:`Algorithm.dropped` where dropped: ``weight`` for
    iterated DRIFT, 0 where dropped; ``advantage`` for grpo, null where dropped), for ``drift view``
    and the like."""
    from drift.records import write_records

    algo = ALGORITHMS[algorithm]
    write_records(
        path,
        (
            {**rec, "return": r, algo.column: algo.dropped if c is None else c}
            for rec, r, c in zip(records, returns, coef)
        ),
    )
