"""Metrics against hand-computed values, edge cases and invariants (see src/drift/metrics.py)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drift import DriftError
from drift.metrics import (
    correction_rate,
    cumulative_accuracy,
    cut_to,
    format_error_rate,
    mean_turns_to_solve,
    overall_correction_rate,
    pass_at_k,
    per_turn_accuracy,
    summarize,
    unbiased_pass_at_k,
    unique_answer_ratio,
    wilson_interval,
)
from drift.records import read_records, validate_record
from drift.report import score_records
from factories import REFERENCE_SAMPLE as REFERENCE


def episode(answers, correct, *, prompt_id="p0", traj_id=0, max_turns=None) -> dict:
    """A valid schema-1 record with one assistant reply per turn (null answer = no tag)."""
    messages = [{"role": "user", "content": "question"}]
    for t, answer in enumerate(answers):
        if t:
            messages.append({"role": "user", "content": "Incorrect. Please think again."})
        messages.append({"role": "assistant", "content": "no tag" if answer is None else f"<answer>{answer}</answer>"})
    rec = {
        "schema": 1,
        "prompt_id": prompt_id,
        "traj_id": traj_id,
        "messages": messages,
        "answers": list(answers),
        "correct": list(correct),
        "rewards": [float(c) for c in correct],
        "format_errors": list(answers).count(None),
        "first_correct_turn": correct.index(True) + 1 if True in correct else None,
    }
    if max_turns is not None:
        rec["max_turns"] = max_turns
    return validate_record(rec)


def five_episodes() -> list[dict]:
    """A..E below; budget 3 turns, each episode stops at its first correct turn."""
    return [
        episode(["4"], [True], traj_id=0),  # A: solved at 1
        episode(["3", "4"], [False, True], traj_id=1),  # B: solved at 2
        episode([None, "5", "4"], [False, False, True], traj_id=2),  # C: solved at 3, 1 format error
        episode(["3", "3", "3"], [False, False, False], traj_id=3),  # D: never, repeats itself
        episode([None, None, None], [False, False, False], traj_id=4),  # E: never, no answer at all
    ]


# -- hand-computed -------------------------------------------------------------------------------


def test_per_turn_and_cumulative_accuracy_by_hand():
    recs = five_episodes()
    # t=1: all 5 reached, A right -> 1/5; t=2: B,C,D,E reached, B right -> 1/4;
    # t=3: C,D,E reached, C right -> 1/3
    assert per_turn_accuracy(recs) == {1: 1 / 5, 2: 1 / 4, 3: 1 / 3}
    # solved by t: {A} 1/5, {A,B} 2/5, {A,B,C} 3/5
    assert cumulative_accuracy(recs) == {1: 1 / 5, 2: 2 / 5, 3: 3 / 5}
    # a longer horizon than anyone took: nobody more is solved, the turn nobody reached is None
    assert cumulative_accuracy(recs, max_turns=4)[4] == 3 / 5
    assert per_turn_accuracy(recs, max_turns=4)[4] is None


def test_correction_rates_by_hand():
    recs = five_episodes()
    # t=2: wrong at turn 1 and reached turn 2: B,C,D,E (4); fixed at 2: B -> 1/4
    # t=3: wrong at turns 1-2 and reached 3: C,D,E (3); fixed at 3: C -> 1/3
    assert correction_rate(recs) == {2: 1 / 4, 3: 1 / 3}
    # overall: of B,C,D,E (wrong at 1, got a second turn), B and C were fixed later -> 2/4
    assert overall_correction_rate(recs) == 0.5


def test_other_metrics_by_hand():
    recs = five_episodes()
    # unique/answers: A 1/1, B 2/2, C 2/2 (null ignored), D 1/3; E has no answer and is left out
    assert unique_answer_ratio(recs) == pytest.approx((1 + 1 + 1 + 1 / 3) / 4)
    # format errors 0+0+1+0+3 = 4 over turns 1+2+3+3+3 = 12
    assert format_error_rate(recs) == pytest.approx(4 / 12)
    # solved at 1, 2, 3 -> mean 2
    assert mean_turns_to_solve(recs) == 2.0


def test_summarize_by_hand():
    s = summarize(five_episodes())
    assert (s["n"], s["solved"], s["max_turns"]) == (5, 3, 3)
    assert s["cumulative_accuracy"] == {"1": 0.2, "2": 0.4, "3": 0.6}
    assert s["per_turn_accuracy"] == {"1": 0.2, "2": 0.25, "3": 1 / 3}
    assert s["correction_rate"] == {"2": 0.25, "3": 1 / 3}
    assert s["correction_rate_overall"] == 0.5
    assert s["cumulative_accuracy_ci"]["3"] == list(wilson_interval(3, 5))
    assert s["per_turn_accuracy_ci"]["2"] == list(wilson_interval(1, 4))
    assert json.loads(json.dumps(s)) == s  # plain JSON data


def test_horizon_comes_from_the_records_max_turns_field():
    recs = [episode(["4"], [True], max_turns=4), episode(["1", "2"], [False, False], traj_id=1, max_turns=4)]
    assert summarize(recs)["max_turns"] == 4
    assert summarize(recs, max_turns=2)["cumulative_accuracy"] == {"1": 0.5, "2": 0.5}
    with pytest.raises(DriftError, match="max_turns"):
        summarize(recs, max_turns=0)


def test_a_smaller_budget_cuts_every_metric_alike():
    """summarize(..., max_turns=2) of 3-turn episodes is the report of the same episodes given 2
    turns: solved, the correction rate, unique answers and format errors count turns 1-2 only."""
    recs = five_episodes()
    cut = summarize(recs, max_turns=2)
    by_hand = [
        episode(["4"], [True], traj_id=0),
        episode(["3", "4"], [False, True], traj_id=1),
        episode([None, "5"], [False, False], traj_id=2),
        episode(["3", "3"], [False, False], traj_id=3),
        episode([None, None], [False, False], traj_id=4),
    ]
    assert cut == summarize(by_hand)
    assert (cut["solved"], cut["correction_rate_overall"], cut["mean_turns_to_solve"]) == (2, 0.25, 1.5)
    assert cut["format_error_rate"] == 3 / 9 and cut["unique_answer_ratio"] == (1 + 1 + 1 + 0.5) / 4
    assert score_records(recs, max_turns=2)["pass_at_k"] == score_records(by_hand)["pass_at_k"]


def test_episodes_of_different_turn_budgets_are_not_reported_together():
    recs = [episode(["1", "2", "3"], [False] * 3, max_turns=3), episode(["4"], [True], traj_id=1, max_turns=5)]
    with pytest.raises(DriftError, match="turn budgets 3 and 5"):
        score_records(recs)
    assert score_records(recs, max_turns=3)["max_turns"] == 3  # a stated budget is the same for all


def test_correction_rate_is_not_per_turn_accuracy_when_episodes_go_on():
    # Right at turn 1 and again at turn 2 (an environment that does not stop): turn 2 is correct,
    # but nothing was corrected there.
    recs = [episode(["4", "4"], [True, True])]
    assert per_turn_accuracy(recs)[2] == 1.0
    assert correction_rate(recs) == {2: None}


def test_correction_rate_leaves_out_episodes_that_stopped_unsolved():
    # B's budget was one turn: wrong at turn 1 but never got the chance to correct itself.
    recs = [episode(["3", "4"], [False, True]), episode(["3"], [False], traj_id=1, max_turns=1)]
    assert correction_rate(recs) == {2: 1.0}
    assert overall_correction_rate(recs) == 1.0
    assert cumulative_accuracy(recs) == {1: 0.0, 2: 0.5}


# -- edge cases -----------------------------------------------------------------------------------


def test_no_episodes_gives_none_not_zero_division():
    s = summarize([])
    assert s["n"] == 0 and s["max_turns"] == 0 and s["cumulative_accuracy"] == {}
    s = summarize([], max_turns=3)
    assert s["cumulative_accuracy"] == {"1": None, "2": None, "3": None}
    assert s["cumulative_accuracy_ci"] == {"1": None, "2": None, "3": None}
    assert s["per_turn_accuracy"]["1"] is None and s["correction_rate"] == {"2": None, "3": None}
    for key in ("correction_rate_overall", "unique_answer_ratio", "format_error_rate", "mean_turns_to_solve"):
        assert s[key] is None, key
    report = score_records([], max_turns=3)
    assert report["pass_at_k"] == {} and report["prompts"] == 0


def test_all_solved_at_turn_one():
    recs = [episode(["4"], [True], traj_id=i, max_turns=3) for i in range(4)]
    s = summarize(recs)
    assert s["cumulative_accuracy"] == {"1": 1.0, "2": 1.0, "3": 1.0}
    assert s["per_turn_accuracy"] == {"1": 1.0, "2": None, "3": None}  # nobody needed turn 2
    assert s["correction_rate"] == {"2": None, "3": None}
    assert s["correction_rate_overall"] is None
    assert s["mean_turns_to_solve"] == 1.0
    assert s["cumulative_accuracy_ci"]["1"][1] == 1.0


def test_never_solved():
    recs = [episode(["1", "2"], [False, False], traj_id=i) for i in range(3)]
    s = summarize(recs)
    assert s["cumulative_accuracy"] == {"1": 0.0, "2": 0.0}
    assert s["correction_rate"] == {"2": 0.0} and s["correction_rate_overall"] == 0.0
    assert s["mean_turns_to_solve"] is None
    assert s["cumulative_accuracy_ci"]["2"][0] == 0.0
    assert s["unique_answer_ratio"] == 1.0


def test_format_errors_only():
    recs = [episode([None, None], [False, False], traj_id=i) for i in range(2)]
    s = summarize(recs)
    assert s["format_error_rate"] == 1.0
    assert s["unique_answer_ratio"] is None  # no parsable answer to compare
    assert s["cumulative_accuracy"] == {"1": 0.0, "2": 0.0}


# -- Wilson interval and pass@k ------------------------------------------------------------------


@pytest.mark.parametrize(
    "successes, n, expected",
    [
        (5, 10, (0.2366, 0.7634)),  # p = 0.5: 0.5 +- 1.96/1.38416 * sqrt(0.025 + 0.009604)
        (0, 10, (0.0, 0.2775)),  # upper = (z²/n) / (1 + z²/n) = 0.38416 / 1.38416
        (10, 10, (0.7225, 1.0)),  # mirror image of 0/10
        (1, 1, (0.2065, 1.0)),  # lower = 1 / (1 + z²) = 1 / 4.8416
        (0, 0, (0.0, 1.0)),  # no data: the whole range
    ],
)
def test_wilson_interval_known_values(successes, n, expected):
    lo, hi = wilson_interval(successes, n)
    assert (round(lo, 4), round(hi, 4)) == expected


def test_wilson_interval_rejects_impossible_counts():
    # the check's own message, not a ValueError the maths would raise further on (sqrt of p(1-p) < 0)
    with pytest.raises(ValueError, match=r"^need integers 0 <= successes <= n, got successes=3, n=2$"):
        wilson_interval(3, 2)
    with pytest.raises(ValueError, match=r"^need integers 0 <= successes <= n, got successes=-1, n=2$"):
        wilson_interval(-1, 2)


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (10, 3, 1, 0.3),  # pass@1 = c/n
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (10, 0, 5, 0.0),
        (10, 6, 5, 1.0),  # n - c = 4 < k: any 5 of them hold a correct one
        (200, 13, 100, 1 - math.comb(187, 100) / math.comb(200, 100)),
    ],
)
def test_unbiased_pass_at_k_known_values(n, c, k, expected):
    assert unbiased_pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_pass_at_k_over_prompts():
    recs = [
        episode(["4"], [True], prompt_id="a", traj_id=0),
        episode(["3", "4"], [False, True], prompt_id="a", traj_id=1),  # solved later still counts
        episode(["3", "5"], [False, False], prompt_id="a", traj_id=2),
        episode(["1"], [False], prompt_id="b", traj_id=0),
        episode(["1"], [False], prompt_id="b", traj_id=1),
        episode(["1"], [False], prompt_id="b", traj_id=2),
    ]
    # a: 2 of 3 solved, b: 0 of 3
    assert pass_at_k(recs, 1) == pytest.approx((2 / 3 + 0) / 2)
    assert pass_at_k(recs, 2) == pytest.approx((1.0 + 0) / 2)  # a: 1 - C(1,2)/C(3,2) = 1
    assert score_records(recs)["pass_at_k"] == {"1": pytest.approx(1 / 3), "2": pytest.approx(0.5)}
    with pytest.raises(DriftError, match="at least 4 episodes"):
        pass_at_k(recs, 4)


# -- invariants ----------------------------------------------------------------------------------


@st.composite
def episodes(draw, same_budget: bool = False):
    """Episodes that stop at their first correct turn or at their budget (or, unless
    same_budget, get cut off earlier)."""
    budget = draw(st.integers(1, 6))
    recs = []
    for i in range(draw(st.integers(1, 25))):
        taken = budget if same_budget else draw(st.integers(1, budget))
        solved_at = draw(st.one_of(st.none(), st.integers(1, taken)))
        correct = [False] * taken if solved_at is None else [False] * (solved_at - 1) + [True]
        answers = draw(
            st.lists(st.one_of(st.none(), st.sampled_from("abc")), min_size=len(correct), max_size=len(correct))
        )
        recs.append(episode(answers, correct, traj_id=i, max_turns=budget))
    return recs


@settings(max_examples=150, deadline=None)
@given(episodes())
def test_cumulative_accuracy_is_a_nondecreasing_share(recs):
    s = summarize(recs)
    cumulative = [s["cumulative_accuracy"][str(t)] for t in range(1, s["max_turns"] + 1)]
    assert all(0.0 <= a <= 1.0 for a in cumulative)
    assert all(a <= b for a, b in itertools.pairwise(cumulative))
    assert cumulative[0] == s["per_turn_accuracy"]["1"]
    assert cumulative[-1] == s["solved"] / s["n"]
    for t, (lo, hi) in s["cumulative_accuracy_ci"].items():
        assert lo <= s["cumulative_accuracy"][t] <= hi


@settings(max_examples=150, deadline=None)
@given(episodes(same_budget=True))
def test_unsolved_share_is_the_product_of_turn_failures(recs):
    # With one budget and no cut-offs: 1 - A_t = (1 - a_1) * prod_{u=2..t} (1 - c_u).
    # A None c_u means nobody was left to correct, so the product is already 0.
    s = summarize(recs)
    left = 1.0 - s["per_turn_accuracy"]["1"]
    for t in range(2, s["max_turns"] + 1):
        left *= 1.0 - (s["correction_rate"][str(t)] or 0.0)
        assert 1.0 - s["cumulative_accuracy"][str(t)] == pytest.approx(left, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=1, max_size=4), max_size=12), st.sampled_from([None, 2, 5]))
def test_summarize_agrees_with_the_metric_functions(corrects, max_turns):
    # any correct-lists, also episodes that go on after a correct turn
    recs = [episode(["x"] * len(c), c, traj_id=i) for i, c in enumerate(corrects)]
    s = summarize(recs, max_turns)

    def keyed(table):
        return {str(t): v for t, v in table.items()}

    assert s["per_turn_accuracy"] == keyed(per_turn_accuracy(recs, max_turns))
    assert s["cumulative_accuracy"] == keyed(cumulative_accuracy(recs, max_turns))
    assert s["correction_rate"] == keyed(correction_rate(recs, max_turns))
    within = cut_to(recs, max_turns) if max_turns else recs  # every metric counts the budget's turns
    assert s["correction_rate_overall"] == overall_correction_rate(within)


# -- the reference sample --------------------------------------------------------------------------


def test_score_records_matches_t_star_counts_of_the_reference_file():
    raw = [json.loads(line) for line in REFERENCE.read_text().splitlines() if line.strip()]
    report = score_records(read_records(REFERENCE))
    assert report["n"] == len(raw) == 48
    assert report["max_turns"] == 5
    for t in range(1, 6):
        solved_by_t = sum(1 for r in raw if r["t_star"] is not None and r["t_star"] <= t)
        assert report["cumulative_accuracy"][str(t)] == solved_by_t / len(raw), t
    assert report["solved"] == sum(r["t_star"] is not None for r in raw)
    assert report["prompts"] == len({r["prompt_id"] for r in raw})


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=6))
@settings(max_examples=300, deadline=None)
def test_a_seed_interval_holds_its_mean(values):
    """Rounded bounds once fell on the wrong side of the mean: [0.123456] * 2 gave lo 0.1235 > 0.123456."""
    from drift.metrics import seed_interval

    mean, lo, hi = seed_interval(values)
    assert 0.0 <= lo <= mean <= hi <= 1.0
    assert mean == pytest.approx(sum(values) / len(values), abs=1e-6)


def test_a_seed_interval_of_equal_values_is_that_value():
    from drift.metrics import seed_interval

    assert seed_interval([0.123456, 0.123456]) == (0.123456, 0.123456, 0.1235)  # 0.1235 rounds 0.123456 up
    assert seed_interval([1 / 3]) == (0.333333, 0.333333, 0.333333)
