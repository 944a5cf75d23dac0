"""Evaluation metrics of multi-turn correction episodes. Pure Python, no torch.

An episode is one record (see :mod:`drift.records`): turn ``t`` lives at index ``t-1`` of
``correct`` and ``answers``. The environment stops an episode at its first correct turn, so
``len(correct)`` is the number of turns it took; an unsolved episode runs to its turn budget.

Notation: N episodes; episode i took T_i turns and was first correct at turn s_i (none if never)::

    per-turn accuracy    a_t = #{i: T_i >= t and correct_i[t]} / #{i: T_i >= t}
    cumulative accuracy  A_t = #{i: s_i <= t} / N                       multi@k = A_k
    correction rate      c_t = #{i: s_i = t} / #{i: T_i >= t, no s_i < t}   for t >= 2
    overall correction   c   = #{i: s_i >= 2} / #{i: T_i >= 2, s_i != 1}

Choices (say so when you cite):

1. A ratio whose denominator is empty is ``None`` (undefined), never 0: with no episodes every
   accuracy is ``None``, not "the model failed everything". Likewise a turn no episode reached,
   and the mean turns to solve when nothing was solved.
2. The correction rate is "corrected / wrong before": of the episodes still wrong when turn t
   starts (they have heard t-1 times that they were wrong), the share that answers correctly at
   exactly turn t. Episodes that stopped unsolved before t (a shorter turn budget, a cut-off)
   are not in its denominator. When every episode stops at its first correct turn, c_t equals
   a_t for t >= 2; they differ only for records that go on after a correct answer.
3. Confidence intervals are 95% Wilson score intervals (:func:`wilson_interval`), which stay
   inside [0, 1] and behave at 0/n and n/n. They treat episodes as independent; K trajectories
   of one prompt are not, so with K > 1 the intervals are somewhat too narrow.
4. pass@k counts an episode as a success if it is solved at any turn; it needs several
   episodes per prompt (``prompt_id``) and uses the unbiased estimator of Chen et al. (2021).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from operator import itemgetter

from drift import DriftError
from drift.records.schema import first_correct_turn

# -- confidence intervals and pass@k ----------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``successes / n`` (Wilson, 1927).

    ``p = s/n``, ``centre = (p + z²/2n) / (1 + z²/n)``,
    ``half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)``; the interval is ``centre ± half``.
    With ``n = 0`` nothing is known and the interval is the whole ``(0.0, 1.0)``.

    >>> lo, hi = wilson_interval(5, 10)   # p = 0.5, z²/n = 0.38416: 0.5 ± 1.416 * 0.18602
    >>> round(lo, 4), round(hi, 4)
    (0.2366, 0.7634)
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    """
    if not (isinstance(n, int) and isinstance(successes, int) and 0 <= successes <= n):
        raise ValueError(f"need integers 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At p = 0 (or 1) the bound is exactly 0 (or 1); rounding would leave it 1e-17 off.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


# Student's t quantile t_{0.975, df}, df = 1..10; beyond, the df=10 value up to df = 30 and the
# df=30 value after (each at least the true quantile: the interval errs on the wide side)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
_T975_30 = 2.042


def seed_interval(
    values: Sequence[float], within: tuple[float, float] | None = (0.0, 1.0)
) -> tuple[float, float, float] | None:
    """Mean and 95% t-interval of a quantity measured once per seed: ``mean ± t_{0.975, S-1} s / sqrt(S)``
    (s the sample standard deviation over the S seeds), cut to ``within`` (a rate's 0..1; ``None``:
    uncut). It is wider than a per-episode interval: it holds the variation between runs (sampling
    of rollouts, training order), not only of test problems. ``None`` for no value; for one seed the
    interval is the mean alone (nothing is known of the spread).

    >>> seed_interval([0.4, 0.5, 0.6])     # s = 0.1, t_{0.975,2} = 4.303: 0.5 ± 0.2484
    (0.5, 0.2516, 0.7484)
    >>> seed_interval([0.05, 0.7])         # 0.375 ± 12.706 * 0.4596 / sqrt(2), cut to 0..1
    (0.375, 0.0, 1.0)
    """
    if not values:
        return None
    n = len(values)
    mean = sum(values) / n
    shown = round(mean, 6)
    if n == 1:
        return shown, shown, shown
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else (_T975_30 if n - 1 > 30 else _T975[-1])
    half = t * s / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if within is not None:
        lo, hi = max(within[0], lo), min(within[1], hi)
    return shown, min(round(lo, 4), shown), max(round(hi, 4), shown)  # rounding never puts the mean outside


def unbiased_pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k samples, drawn without replacement from n with c correct,
    is correct: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021, "Evaluating Large Language
    Models Trained on Code"), computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` to avoid huge
    binomials.

    >>> unbiased_pass_at_k(n=4, c=1, k=1)   # 1 - C(3,1)/C(4,1) = 1 - 3/4
    0.25
    >>> unbiased_pass_at_k(n=4, c=1, k=2)   # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    >>> unbiased_pass_at_k(n=4, c=3, k=2)   # n - c = 1 < k: every draw of 2 holds a correct one
    1.0
    """
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"need 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k(records: Sequence[dict], k: int) -> float | None:
    """Mean over prompts (``prompt_id``) of :func:`unbiased_pass_at_k`, an episode counting as
    a success if it is solved at any turn. ``None`` for no records; a prompt with fewer than k
    episodes is a :class:`~drift.DriftError`.

    >>> recs = [{"prompt_id": "a", "correct": c} for c in ([True], [False, True], [False, False])]
    >>> recs += [{"prompt_id": "b", "correct": [False, False]}] * 3
    >>> round(pass_at_k(recs, 1), 4)   # prompt a: 2 of 3 solved -> 2/3; prompt b: 0 -> mean 1/3
    0.3333
    >>> pass_at_k(recs, 2)             # a: 1 - C(1,2)/C(3,2) = 1; b: 0
    0.5
    """
    groups: dict[str, list[bool]] = {}
    for rec in records:
        groups.setdefault(rec["prompt_id"], []).append(True in rec["correct"])
    for prompt_id, solved in groups.items():
        if len(solved) < k:
            raise DriftError(f"pass@{k} needs at least {k} episodes per prompt; {prompt_id!r} has {len(solved)}")
    if not groups:
        return None
    return math.fsum(unbiased_pass_at_k(len(s), sum(s), k) for s in groups.values()) / len(groups)


# -- counting turns ----------------------------------------------------------------------------


def horizon(records: Sequence[dict], max_turns: int | None = None) -> int:
    """Turns to report: ``max_turns`` if given, else the largest turn budget (``max_turns``
    field) or number of turns taken over the records; 0 for no records.

    >>> horizon([{"correct": [True], "max_turns": 5}, {"correct": [False, False]}])
    5
    >>> horizon([{"correct": [True]}], max_turns=3)
    3
    """
    if max_turns is not None:
        if not isinstance(max_turns, int) or max_turns < 1:
            raise DriftError(f"max_turns must be a positive integer, got {max_turns!r}")
        return max_turns
    return max((max(rec.get("max_turns") or 0, len(rec["correct"])) for rec in records), default=0)


def cut_to(records: Sequence[dict], max_turns: int) -> list[dict]:
    """The episodes as a budget of ``max_turns`` turns leaves them: a longer one keeps its first
    ``max_turns`` of ``correct``, ``answers`` and ``format_errors`` (the others are returned as they are).

    >>> cut_to([{"correct": [False, False, True], "answers": [None, "3", "4"], "format_errors": 1}], 2)
    [{'correct': [False, False], 'answers': [None, '3'], 'format_errors': 1}]
    """
    cut = []
    for rec in records:
        if len(rec["correct"]) > max_turns:
            answers = rec["answers"][:max_turns]
            correct = rec["correct"][:max_turns]
            rec = {**rec, "correct": correct, "answers": answers, "format_errors": answers.count(None)}
        cut.append(rec)
    return cut


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def turn_counts(records: Sequence[dict], max_turns: int | None = None) -> dict[int, dict[str, int]]:
    """The counts behind every per-turn metric, for t = 1..:func:`horizon`:

    ``reached``   episodes that took turn t (T_i >= t)
    ``correct``   of those, correct at turn t
    ``solved_at`` first correct at exactly turn t (s_i = t)
    ``solved_by`` first correct at or before turn t (s_i <= t)
    ``wrong_before`` episodes that took turn t and were wrong on every turn before it

    >>> turn_counts([{"correct": [True]}, {"correct": [False, True]}, {"correct": [False, False]}])[2]
    {'reached': 2, 'correct': 1, 'solved_at': 1, 'solved_by': 2, 'wrong_before': 2}
    """
    counts = {
        t: dict.fromkeys(("reached", "correct", "solved_at", "solved_by", "wrong_before"), 0)
        for t in range(1, horizon(records, max_turns) + 1)
    }
    # Every count depends on an episode only through its correctness pattern, and there are few
    # distinct patterns (at most 2^T): count those in one C-level pass, then work per pattern.
    patterns = Counter(map(tuple, map(itemgetter("correct"), records)))
    for correct, n in patterns.items():
        s = first_correct_turn(correct)
        for t, c in counts.items():
            if len(correct) >= t:
                c["reached"] += n
                c["correct"] += n * bool(correct[t - 1])
                c["wrong_before"] += n * (s is None or s >= t)
            c["solved_at"] += n * (s == t)
            c["solved_by"] += n * (s is not None and s <= t)
    return counts


# -- metrics -----------------------------------------------------------------------------------


def per_turn_accuracy(records: Sequence[dict], max_turns: int | None = None) -> dict[int, float | None]:
    """``a_t = #{correct at turn t} / #{episodes that reached turn t}``; ``None`` if none reached t.

    >>> recs = [{"correct": [True]}, {"correct": [False, True]}, {"correct": [False, False]}]
    >>> per_turn_accuracy(recs)   # t=1: 1 of 3 right; t=2: 1 of the 2 still going
    {1: 0.3333333333333333, 2: 0.5}
    """
    return {t: _ratio(c["correct"], c["reached"]) for t, c in turn_counts(records, max_turns).items()}


def cumulative_accuracy(records: Sequence[dict], max_turns: int | None = None) -> dict[int, float | None]:
    """``A_t = #{solved at or before turn t} / #{all episodes}``; multi@k is ``A_k``.

    Non-decreasing in t; ``None`` everywhere when there are no episodes.

    >>> recs = [{"correct": [True]}, {"correct": [False, True]}, {"correct": [False, False]}]
    >>> cumulative_accuracy(recs, max_turns=3)   # 1/3, 2/3, and nobody solves at turn 3
    {1: 0.3333333333333333, 2: 0.6666666666666666, 3: 0.6666666666666666}
    """
    return {t: _ratio(c["solved_by"], len(records)) for t, c in turn_counts(records, max_turns).items()}


def correction_rate(records: Sequence[dict], max_turns: int | None = None) -> dict[int, float | None]:
    """Corrected / wrong before: ``c_t = #{first correct at exactly t} / #{reached t, wrong on
    every turn before t}`` for t >= 2; ``None`` where no such episode reached t.

    >>> recs = [{"correct": [True]}, {"correct": [False, True]},
    ...         {"correct": [False, False, True]}, {"correct": [False, False, False]}]
    >>> correction_rate(recs)   # t=2: 1 fixed of the 3 wrong at turn 1; t=3: 1 of the 2 left
    {2: 0.3333333333333333, 3: 0.5}
    """
    counts = turn_counts(records, max_turns)
    return {t: _ratio(c["solved_at"], c["wrong_before"]) for t, c in counts.items() if t >= 2}


def overall_correction_rate(records: Sequence[dict]) -> float | None:
    """Share of the episodes wrong at turn 1 that got a second turn and were solved later:
    ``#{first correct at t >= 2} / #{reached turn 2, wrong at turn 1}``.

    >>> recs = [{"correct": [True]}, {"correct": [False, True]},
    ...         {"correct": [False, False, True]}, {"correct": [False, False, False]}]
    >>> overall_correction_rate(recs)   # 2 of the 3 wrong at turn 1 get it right later
    0.6666666666666666
    """
    wrong = [rec["correct"] for rec in records if len(rec["correct"]) >= 2 and not rec["correct"][0]]
    return _ratio(sum(True in correct for correct in wrong), len(wrong))


def unique_answer_ratio(records: Sequence[dict]) -> float | None:
    """Mean over episodes with at least one parsable answer of ``unique answers / answers``
    (nulls ignored): 1 when a model never repeats a rejected answer. ``None`` if no episode has one.

    >>> unique_answer_ratio([{"answers": ["135", "135", "126", None]}, {"answers": ["4"]}, {"answers": [None]}])
    0.8333333333333333
    >>> # (2/3 + 1/1) / 2: the third episode has no parsable answer and is left out
    """
    ratios = []
    for rec in records:
        given = [a for a in rec["answers"] if a is not None]
        if given:
            ratios.append(len(set(given)) / len(given))
    return math.fsum(ratios) / len(ratios) if ratios else None


def format_error_rate(records: Sequence[dict]) -> float | None:
    """``sum format_errors / sum turns taken``: the share of replies with no parsable answer.

    >>> format_error_rate([{"correct": [False, True], "format_errors": 1}, {"correct": [True], "format_errors": 0}])
    0.3333333333333333
    """
    return _ratio(sum(rec["format_errors"] for rec in records), sum(len(rec["correct"]) for rec in records))


def mean_turns_to_solve(records: Sequence[dict]) -> float | None:
    """Mean first correct turn over the solved episodes; ``None`` if none is solved.

    >>> mean_turns_to_solve([{"correct": [True]}, {"correct": [False, False, True]}, {"correct": [False]}])
    2.0
    """
    firsts = [s for s in (first_correct_turn(rec["correct"]) for rec in records) if s is not None]
    return math.fsum(firsts) / len(firsts) if firsts else None


# -- the report core -----------------------------------------------------------------------------


def pass_at_k_values(records: Sequence[dict]) -> dict[str, float | None]:
    """pass@k for k = 1, 2, 4, ... up to the fewest episodes any prompt has (``{}`` for none).

    >>> pass_at_k_values([{"prompt_id": "a", "correct": [True]}, {"prompt_id": "a", "correct": [False]}])
    {'1': 0.5, '2': 1.0}
    """
    sizes: dict[str, int] = {}
    for rec in records:
        sizes[rec["prompt_id"]] = sizes.get(rec["prompt_id"], 0) + 1
    fewest = min(sizes.values(), default=0)
    ks = [2**i for i in range(fewest.bit_length())]
    return {str(k): pass_at_k(records, k) for k in ks}


def summarize(records: Sequence[dict], max_turns: int | None = None) -> dict:
    """The metrics of a set of episodes as plain JSON data; turn keys are 1-based strings.

    Keys: ``n``, ``solved``, ``max_turns``, ``per_turn_accuracy``, ``per_turn_accuracy_ci``,
    ``cumulative_accuracy``, ``cumulative_accuracy_ci`` (``{"1": [lo, hi], ...}``, Wilson 95%;
    ``None`` where the accuracy is), ``correction_rate`` (turns 2..), ``correction_rate_overall``,
    ``unique_answer_ratio``, ``format_error_rate``, ``mean_turns_to_solve``.

    >>> recs = [{"correct": [True], "answers": ["4"], "format_errors": 0},
    ...         {"correct": [False, True], "answers": [None, "4"], "format_errors": 1}]
    >>> s = summarize(recs, max_turns=2)
    >>> s["cumulative_accuracy"], s["correction_rate"], s["format_error_rate"]
    ({'1': 0.5, '2': 1.0}, {'2': 1.0}, 0.3333333333333333)
    >>> summarize([])["cumulative_accuracy"], summarize([], max_turns=1)["cumulative_accuracy"]
    ({}, {'1': None})

    With ``max_turns`` below the turns some episodes took, every metric counts the first
    ``max_turns`` turns only (:func:`cut_to`).
    """
    if max_turns is not None:
        records = cut_to(records, horizon(records, max_turns))
    n = len(records)
    counts = turn_counts(records, max_turns)

    def ci(num: int, den: int) -> list[float] | None:
        return list(wilson_interval(num, den)) if den else None

    return {
        "n": n,
        "solved": sum(True in rec["correct"] for rec in records),
        "max_turns": len(counts),
        "per_turn_accuracy": {str(t): _ratio(c["correct"], c["reached"]) for t, c in counts.items()},
        "per_turn_accuracy_ci": {str(t): ci(c["correct"], c["reached"]) for t, c in counts.items()},
        "cumulative_accuracy": {str(t): _ratio(c["solved_by"], n) for t, c in counts.items()},
        "cumulative_accuracy_ci": {str(t): ci(c["solved_by"], n) for t, c in counts.items()},
        "correction_rate": {str(t): _ratio(c["solved_at"], c["wrong_before"]) for t, c in counts.items() if t >= 2},
        "correction_rate_overall": overall_correction_rate(records),
        "unique_answer_ratio": unique_answer_ratio(records),
        "format_error_rate": format_error_rate(records),
        "mean_turns_to_solve": mean_turns_to_solve(records),
    }
