"""Diagnostics of a weighting by hand: ESS, group kinds, success by turn."""

import pytest

from drift.diagnostics import diagnostics, kish_ess
from drift.weighting import compute_weights
from factories import weighting
from test_weighting import _records


def test_kish_ess():
    assert kish_ess([2.0, 2.0]) == 2.0
    assert kish_ess([1.0, 0.0, 0.0]) == 1.0
    assert kish_ess([]) == 0.0


def test_diagnostics_by_hand():
    recs = _records()
    returns, weights = compute_weights(recs, weighting())
    d = diagnostics(recs, returns, weights)
    assert d["groups"] == 2 and d["mixed_groups"] == 0.5 and d["all_fail_groups"] == 0.5
    assert d["zero_variance_groups"] == 0.5
    # 1 of 5 solved at turn 1, 2 of 5 by turn 2
    assert d["success_by_turn"] == {"1": 0.2, "2": 0.4}
    assert d["mean_return"] == pytest.approx((1 + 0.9 - 0.25) / 5)
