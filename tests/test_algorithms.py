"""drift.algorithms: a round's returns and loss coefficients, by hand and against drift weight."""

import pytest

from drift.algorithms import group_advantages, round_coefficients
from drift.config import RLConfig, WeightConfig
from drift.weighting import compute_weights, group_weights
from factories import make_record


def test_group_advantages_by_hand():
    # returns (1, 0.9, 0, 0): mean 0.475, deviations (0.525, 0.425, -0.475, -0.475)
    adv = group_advantages([1.0, 0.9, 0.0, 0.0], {"p": [0, 1, 2, 3]}, normalize_std=False)
    assert adv == pytest.approx([0.525, 0.425, -0.475, -0.475])
    # population std = sqrt((0.525^2 + 0.425^2 + 2 * 0.475^2) / 4) = 0.4776
    std = ((0.525**2 + 0.425**2 + 2 * 0.475**2) / 4) ** 0.5
    adv = group_advantages([1.0, 0.9, 0.0, 0.0], {"p": [0, 1, 2, 3]})
    assert adv == pytest.approx([0.525 / std, 0.425 / std, -0.475 / std, -0.475 / std], rel=1e-5)
    assert sum(adv) == pytest.approx(0.0, abs=1e-9)
    # two groups are independent; a group without spread gives no signal
    adv = group_advantages([1.0, 0.0, 0.3, 0.3], {"a": [0, 1], "b": [2, 3]})
    assert adv[2:] == [0.0, 0.0] and adv[0] == pytest.approx(1.0, rel=1e-5)


def test_round_coefficients_grpo_and_iterated_drift():
    recs = [make_record("p", 0, ["5"], 1), make_record("p", 1, ["4", "5"], 2), make_record("p", 2, ["4", "4"])]
    returns, coef = round_coefficients(recs, RLConfig())
    # returns: 1, 0.9, -0.5 * (1 - 1/2) = -0.25
    assert returns == pytest.approx([1.0, 0.9, -0.25])
    assert coef == pytest.approx(group_advantages(returns, {"p": [0, 1, 2]}))
    _, coef = round_coefficients(recs, RLConfig(algorithm="drift"))
    assert coef == pytest.approx(group_weights(returns, 0.1))


@pytest.mark.parametrize(
    "options",
    [
        {"all_fail": "drop"},
        {"zero_variance": "drop"},
        {"clip": 1.2},
        {"scheme": "rft"},
        {"beta": 0.5, "gamma": 0.5, "lam": 0.0},
    ],
)
def test_iterated_drift_weighs_a_round_exactly_as_drift_weight_would(options):
    """Every weighting option of drift rl --algorithm drift acts as it does in drift weight
    (all-fail and zero-variance groups dropped, weights clipped, another scheme)."""
    recs = [
        make_record("p", 0, ["5"], 1),
        make_record("p", 1, ["4", "5"], 2),
        make_record("p", 2, ["4", "4"]),
        make_record("q", 0, ["1", "2"]),
        make_record("q", 1, ["1", None]),  # all fail, returns differ
        make_record("z", 0, ["3"]),
        make_record("z", 1, ["3"]),
    ]  # all fail, zero variance
    expected = compute_weights(recs, WeightConfig(**options).weighting())
    assert round_coefficients(recs, RLConfig(algorithm="drift", **options)) == expected
    assert None in expected[1] or options.get("clip") or "beta" in options  # the option really acted


def test_a_round_writes_a_dropped_coefficient_as_its_algorithm_says(tmp_path, monkeypatch):
    # drift weight writes a dropped trajectory's weight 0; grpo leaves its advantage null. That is the
    # algorithm's to say, not the column name's: a new algorithm's "score" may be 0 where dropped.
    from drift.algorithms import ALGORITHMS, Algorithm, write_round
    from drift.records import read_records

    recs = [make_record("p", 0, ["5"], 1), make_record("p", 1, ["4"])]
    monkeypatch.setitem(
        ALGORITHMS, "scored", Algorithm(round_coefficients, column="score", on_policy=False, dropped=0.0)
    )
    written = {}
    for name in ("drift", "grpo", "scored"):
        write_round(tmp_path / f"{name}.jsonl", recs, [1.0, 0.0], [0.5, None], name)
        written[name] = [r[ALGORITHMS[name].column] for r in read_records(tmp_path / f"{name}.jsonl")]
    assert written == {"drift": [0.5, 0.0], "grpo": [0.5, None], "scored": [0.5, 0.0]}
