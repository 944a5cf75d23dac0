"""The health of a weighting: how many samples it effectively keeps, and where its mass sits.

Kish's effective sample size ``ESS = (sum w)^2 / sum w^2`` over the kept trajectories (and per
prompt, ``ESS_g / K_g``), weight quantiles, the shares of all-fail, all-pass, mixed and
zero-variance prompts, and multi@t of the trajectories (the share solved by turn t). ``drift
weight`` prints these and writes them beside its output; ``drift view`` shows the per-prompt ESS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from drift.weighting import Columns, as_columns, zero_variance_groups


def kish_ess(weights: Sequence[float]) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2`` (0 for no or all-zero weights).

    >>> kish_ess([1.0, 1.0, 1.0, 1.0])
    4.0
    >>> kish_ess([4.0, 0.0, 0.0, 0.0])
    1.0
    """
    s2 = math.fsum(w * w for w in weights)
    return math.fsum(weights) ** 2 / s2 if s2 > 0 else 0.0


def diagnostics(records: Sequence[dict] | Columns, returns: Sequence[float], weights: Sequence[float | None]) -> dict:
    """Health of a weighting: how many samples it effectively keeps, and where its mass sits.

    ``ess`` is Kish's over the kept records, ``ess_ratio`` that divided by their number,
    ``group_ess_ratio`` the mean over prompts of ESS_g / K_g. ``success_by_turn[t]`` is the share of
    trajectories solved at or before turn t (multi@t).
    """
    cols = as_columns(records)
    codes, n_groups, n = cols.codes, cols.n_groups, len(cols)
    w = np.array(weights, dtype=np.float64)  # None -> NaN
    kept = ~np.isnan(w)
    size = np.bincount(codes, minlength=n_groups)
    n_solved = np.bincount(codes, weights=cols.first_correct_turn > 0, minlength=n_groups)
    all_pass, all_fail = int((n_solved == size).sum()), int((n_solved == 0).sum())
    kw, kc = w[kept], codes[kept]
    s1 = np.bincount(kc, weights=kw, minlength=n_groups)
    s2 = np.bincount(kc, weights=kw * kw, minlength=n_groups)
    k = np.bincount(kc, minlength=n_groups)
    group_ess = np.divide(s1**2, s2, out=np.zeros(n_groups), where=s2 > 0)[k > 0] / k[k > 0]
    ess = kish_ess(kw.tolist())
    qs = np.quantile(kw, [0.5, 0.9, 0.99]).tolist() if kw.size else [0.0, 0.0, 0.0]
    horizon = int(cols.turns.max()) if n else 0
    solved_by = np.cumsum(np.bincount(cols.first_correct_turn, minlength=horizon + 1)[1:]) / max(n, 1)
    groups = max(n_groups, 1)
    return {
        "records": n,
        "kept": int(kept.sum()),
        "groups": n_groups,
        "group_size_min": int(size.min()) if n_groups else 0,  # trajectories per prompt: K, unless a file was cut
        "group_size_max": int(size.max()) if n_groups else 0,
        "all_fail_groups": all_fail / groups,
        "all_pass_groups": all_pass / groups,
        "mixed_groups": (n_groups - all_fail - all_pass) / groups,
        "zero_variance_groups": int(zero_variance_groups(np.asarray(returns, float), codes, n_groups).sum()) / groups,
        "mean_return": math.fsum(returns) / n if n else 0.0,
        "ess": ess,
        "ess_ratio": ess / kw.size if kw.size else 0.0,
        "group_ess_ratio": float(group_ess.mean()) if group_ess.size else 0.0,
        "weight_p50": qs[0],
        "weight_p90": qs[1],
        "weight_p99": qs[2],
        "weight_max": float(kw.max()) if kw.size else 0.0,
        "success_by_turn": {str(t): float(a) for t, a in enumerate(solved_by[:horizon].tolist(), start=1)},
    }
