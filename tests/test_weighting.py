"""The weighting math against hand-computed values, invariants and random groups."""

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drift import DriftError
from drift.diagnostics import diagnostics
from drift.weighting import (
    SCHEMES,
    Columns,
    Scheme,
    compute_returns,
    compute_weights,
    discounted_return,
    group_weights,
    repetition_penalty,
    trajectory_return,
)
from factories import weighting


def make(prompt_id, traj_id, answers, first_correct=None):
    """A record with the given per-turn answers; correct only at ``first_correct`` (1-based)."""
    turns = len(answers)
    correct = [t + 1 == first_correct for t in range(turns)]
    msgs = [{"role": "user", "content": "q"}]
    for a in answers:
        msgs += [{"role": "assistant", "content": f"<answer>{a}</answer>"}, {"role": "user", "content": "again"}]
    return {
        "schema": 1,
        "prompt_id": prompt_id,
        "traj_id": traj_id,
        "messages": msgs[:-1],
        "answers": answers,
        "correct": correct,
        "rewards": [float(c) for c in correct],
        "format_errors": answers.count(None),
        "first_correct_turn": first_correct,
    }


# -- returns, by hand -------------------------------------------------------------------------


def test_discounted_return_by_hand():
    # r = (0, 0, 0, 1): gamma^3 = 0.9^3 = 0.729
    assert discounted_return([0, 0, 0, 1], 0.9) == pytest.approx(0.729, abs=1e-15)
    # two rewards: 1 + 0.5 * 1 = 1.5
    assert discounted_return([1, 1], 0.5) == 1.5
    assert discounted_return([], 0.9) == 0.0


def test_repetition_penalty_by_hand():
    # 4 answers, 1 unique: 0.5 * (1 - 1/4) = 0.375
    assert repetition_penalty(["7", "7", "7", "7"], 0.5) == 0.375
    # nulls are not answers: 2 answers, 2 unique -> 0
    assert repetition_penalty(["1", None, "2", None], 0.5) == 0.0
    assert repetition_penalty([], 0.5) == 0.0


def test_trajectory_return_composes_three_terms():
    # solved at turn 4 (0.9^3 = 0.729), 1 format error (-0.1),
    # answers 5, 5, 6 -> 3 answers 2 unique -> 0.5 * (1 - 2/3) = 1/6
    r = trajectory_return([0, 0, 0, 1], ["5", None, "5", "6"], 1, gamma=0.9, lam=0.5, format_penalty=0.1)
    assert r == pytest.approx(0.729 - 0.1 - 0.5 / 3, abs=1e-12)


# -- group weights, by hand -------------------------------------------------------------------


def test_group_weights_by_hand():
    # returns (1, 0), beta 0.1: exp(10), exp(0); mean (e^10 + 1)/2
    w = group_weights([1.0, 0.0], beta=0.1)
    assert w[0] == pytest.approx(2 * math.exp(10) / (math.exp(10) + 1), rel=1e-12)
    assert w[1] == pytest.approx(2 / (math.exp(10) + 1), rel=1e-12)


def test_group_weights_extreme_returns_do_not_overflow():
    w = group_weights([1e5, -1e5, 0.0], beta=0.1)  # |R/beta| = 1e6
    assert w == [3.0, 0.0, 0.0]
    assert all(math.isfinite(x) for x in group_weights([1e5] * 4, beta=0.1))


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_beta_is_an_error(beta):
    with pytest.raises(DriftError, match="beta"):
        group_weights([0.0, 1.0], beta=beta)
    with pytest.raises(DriftError, match="beta"):
        weighting(beta=beta)


@pytest.mark.parametrize("field", ["format_penalty", "lam"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_negative_or_non_finite_penalties_are_refused(field, value):
    """A negative format penalty ranked a trajectory with an unparsable turn above one solved at
    turn 1 (weights 3.0 against 0.0004); the options check it, and so do the math's parameters."""
    from dataclasses import replace

    from drift.config import WeightingOptions

    with pytest.raises(DriftError, match=field):
        WeightingOptions(**{field: value}).check()
    with pytest.raises(DriftError, match=field):
        replace(weighting(), **{field: value})


# -- invariants -------------------------------------------------------------------------------

returns_lists = st.lists(st.floats(min_value=-50, max_value=50, allow_nan=False), min_size=1, max_size=32)
betas = st.floats(min_value=1e-3, max_value=1e3)


@settings(max_examples=200, deadline=None)
@given(returns_lists, betas)
def test_weights_average_one_and_are_finite(returns, beta):
    w = group_weights(returns, beta)
    assert all(math.isfinite(x) and x >= 0 for x in w)
    assert sum(w) / len(w) == pytest.approx(1.0, rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(returns_lists, betas, st.floats(min_value=-100, max_value=100))
def test_adding_a_constant_changes_nothing(returns, beta, c):
    a = group_weights(returns, beta)
    b = group_weights([r + c for r in returns], beta)
    # shifting by c changes R - max(R) only by rounding
    assert b == pytest.approx(a, rel=1e-6, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(returns_lists, betas, st.randoms())
def test_permuting_records_permutes_weights(returns, beta, rnd):
    order = list(range(len(returns)))
    rnd.shuffle(order)
    w = group_weights(returns, beta)
    assert group_weights([returns[i] for i in order], beta) == pytest.approx([w[i] for i in order], rel=1e-12)


def test_beta_to_infinity_is_uniform_and_to_zero_is_argmax():
    returns = [0.2, 0.9, 0.5, 0.9]
    assert group_weights(returns, 1e9) == pytest.approx([1.0] * 4, rel=1e-6)
    # beta -> 0: the two best share all the mass, 4 / 2 = 2 each
    assert group_weights(returns, 1e-6) == [0.0, 2.0, 0.0, 2.0]


# -- schemes on records -----------------------------------------------------------------------


def _records():
    return [
        make("a", 0, ["1"], 1),  # R = 1
        make("a", 1, ["2", "1"], 2),  # R = 0.9
        make("a", 2, ["2", "2"]),  # R = -0.5 * (1 - 1/2) = -0.25
        make("b", 0, ["5", "6"]),  # all fail, R = 0
        make("b", 1, ["5", "6"]),  # R = 0 -> zero-variance group
    ]


def test_drift_scheme_on_records_by_hand():
    returns, weights = compute_weights(_records(), weighting(beta=0.1, gamma=0.9))
    assert returns == pytest.approx([1.0, 0.9, -0.25, 0.0, 0.0])
    z = (math.exp(10) + math.exp(9) + math.exp(-2.5)) / 3
    assert weights[:3] == pytest.approx([math.exp(10) / z, math.exp(9) / z, math.exp(-2.5) / z], rel=1e-12)
    assert weights[3:] == [1.0, 1.0]  # the reference code's behaviour on all-fail groups


def test_zero_variance_drop_and_rft_and_sft():
    recs = _records()
    _, w = compute_weights(recs, weighting(zero_variance="drop"))
    assert w[3:] == [None, None] and all(x is not None for x in w[:3])
    _, w = compute_weights(recs, weighting(scheme="rft"))
    assert w == [1.0, 1.0, None, None, None]
    _, w = compute_weights(recs, weighting(scheme="sft"))
    assert w == [1.0] * 5


def test_all_fail_drop_removes_groups_without_a_success():
    recs = _records() + [make("c", 0, ["7", "7"]), make("c", 1, ["7", "8"])]  # all fail, returns differ
    _, w = compute_weights(recs, weighting(all_fail="drop"))
    assert w[3:] == [None] * 4 and all(x is not None for x in w[:3])
    _, w = compute_weights(recs, weighting(zero_variance="drop"))
    assert w[3:5] == [None, None] and w[5] is not None  # group c is not zero-variance


def test_rwr_normalises_over_the_file():
    recs = _records()
    returns, w = compute_weights(recs, weighting(scheme="rwr", beta=0.5))
    assert w == pytest.approx(group_weights(returns, 0.5), rel=1e-12)  # one group: the whole file
    assert sum(w) / len(w) == pytest.approx(1.0)


def test_clip_caps_without_renormalising():
    _, w = compute_weights(_records(), weighting(clip=1.5))
    assert max(w) == 1.5
    assert w[3:] == [1.0, 1.0]


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=6), st.integers(min_value=1, max_value=8), st.integers(0, 10**6))
def test_random_files_average_one_per_group(n_prompts, k, seed):
    rnd = random.Random(seed)
    recs = []
    for p in range(n_prompts):
        for j in range(k):
            turns = rnd.randint(1, 5)
            answers = [rnd.choice(["1", "2", None]) for _ in range(turns)]
            first = turns if rnd.random() < 0.5 else None
            recs.append(make(f"p{p}", j, answers, first))
    returns, weights = compute_weights(recs, weighting(beta=rnd.choice([0.01, 0.1, 1.0])))
    for p in range(n_prompts):
        ws = [w for r, w in zip(recs, weights) if r["prompt_id"] == f"p{p}"]
        assert sum(ws) / len(ws) == pytest.approx(1.0, rel=1e-9)
    d = diagnostics(recs, returns, weights)
    assert 0 < d["ess"] <= len(recs) + 1e-9
    assert d["all_fail_groups"] + d["all_pass_groups"] + d["mixed_groups"] == pytest.approx(1.0)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=1, max_value=40),
    st.integers(0, 10**6),
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.0, max_value=2.0),
)
def test_fast_returns_equal_the_reference_formula(n, seed, gamma, lam):
    rnd = random.Random(seed)
    recs = []
    for i in range(n):
        turns = rnd.randint(1, 6)
        answers = [rnd.choice(["1", "2", "3", None]) for _ in range(turns)]
        recs.append(make(f"p{i % 3}", i, answers, turns if rnd.random() < 0.5 else None))
    params = weighting(gamma=gamma, lam=lam, format_penalty=0.1)
    fast = compute_returns(recs, params)
    slow = [
        trajectory_return(r["rewards"], r["answers"], r["format_errors"], gamma=gamma, lam=lam, format_penalty=0.1)
        for r in recs
    ]
    assert fast == pytest.approx(slow, rel=1e-12, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=6),
    st.integers(0, 10**6),
    st.sampled_from([0.01, 0.1, 1.0, 50.0]),
    st.sampled_from(sorted(SCHEMES)),
)
def test_every_scheme_equals_its_readable_per_group_function(group_sizes, seed, beta, scheme):
    """What compute_weights gives (through a vectorised twin where the scheme has one) equals the
    scheme's per-group function called on each group by hand."""
    rnd = random.Random(seed)
    recs = []
    for g, k in enumerate(group_sizes):
        for j in range(k):
            answers = [rnd.choice(["1", "2", None]) for _ in range(rnd.randint(1, 4))]
            recs.append(make(f"p{g}", j, answers, len(answers) if rnd.random() < 0.4 else None))
    rnd.shuffle(recs)  # groups interleaved in the file
    params = weighting(beta=beta, scheme=scheme)
    returns, weights = compute_weights(recs, params)
    groups: dict = {}
    for i, r in enumerate(recs):
        groups.setdefault("file" if SCHEMES[scheme].group == "file" else r["prompt_id"], []).append(i)
    expected = [0.0] * len(recs)
    for idx in groups.values():
        solved = np.array([recs[i]["first_correct_turn"] is not None for i in idx])
        for i, w in zip(idx, SCHEMES[scheme].per_group(np.array([returns[i] for i in idx]), solved, params)):
            expected[i] = None if math.isnan(w) else float(w)
    assert [w is None for w in weights] == [w is None for w in expected]
    assert [w for w in weights if w is not None] == pytest.approx(
        [w for w in expected if w is not None], rel=1e-12, abs=1e-300
    )


def test_a_new_scheme_is_one_per_group_function(monkeypatch):
    """A scheme without a vectorised twin runs through its per-group function, group by group."""

    def best_only(returns, solved, params):  # all the weight on the group's best trajectory
        w = np.zeros(len(returns))
        w[int(np.argmax(returns))] = len(returns)
        return w

    monkeypatch.setitem(SCHEMES, "best", Scheme(best_only))
    returns, weights = compute_weights(_records(), weighting(scheme="best"))
    assert returns == pytest.approx([1.0, 0.9, -0.25, 0.0, 0.0])
    assert weights == [3.0, 0.0, 0.0, 2.0, 0.0]  # group a: the first is best; group b: a tie, first wins


def test_columns_are_what_the_math_reads():
    recs = _records()
    cols = Columns.of(recs)
    assert cols.codes.tolist() == [0, 0, 0, 1, 1] and cols.n_groups == 2 and len(cols) == 5
    assert cols.turns.tolist() == [1, 2, 2, 2, 2] and cols.rewards.tolist() == [1, 0, 1, 0, 0, 0, 0, 0, 0]
    assert cols.answered.tolist() == [1, 2, 2, 2, 2] and cols.distinct.tolist() == [1, 2, 1, 2, 2]
    assert cols.first_correct_turn.tolist() == [1, 2, 0, 0, 0]
    returns, weights = compute_weights(cols, weighting())
    assert (returns, weights) == compute_weights(recs, weighting())
    assert diagnostics(cols, returns, weights) == diagnostics(recs, returns, weights)
    empty = Columns.of([])
    assert compute_weights(empty, weighting()) == ([], []) and diagnostics(empty, [], [])["records"] == 0
