"""Verifiers: tables of cases per verifier, the math time limit (main thread and others), counts."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from drift import DriftError
from drift.verifiers import (
    VERIFIERS,
    MathWorker,
    Verifier,
    VerifierStats,
    get_verifier,
    number_key,
    parse_choice,
    parse_number,
    verify_math,
)

NESTED_FRAC = "\\frac{" * 50 + "1" + "}{2}" * 50  # 300 characters that sympy never finishes with
TOWER = "9^{9^{9^{9}}}"  # sympy tries to compute 9^(9^(9^9))

MATH_CASES = [
    ("0.5", "1/2", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\frac{1}{2}", "0.5", True),
    ("\\frac12", "1/2", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("1,000", "1000", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("\\{2,1\\}", "\\{1,2\\}", True),  # sets: order does not matter
    ("[0,1)", "[0, 1)", True),
    ("(0,1]", "[0,1)", False),  # intervals: ends matter
    ("\\frac{1}{3}", "0.5", False),
    ("\\pi", "3.14159", False),
    ("3", "4", False),
    ("1000001", "1000000", False),
    ("1234567.5", "1234567", False),  # an integer is matched exactly, also by a decimal
    ("12", "1,2", False),  # a list is not a number
    ("", "3", False),
    ("3", "", False),
]


@pytest.mark.parametrize("prediction, gold, expected", MATH_CASES)
def test_math(prediction, gold, expected):
    assert verify_math(prediction, gold) is expected


def test_math_fast_paths_need_no_worker():
    class NoWorker:
        def check(self, *args):
            raise AssertionError("the worker should not be asked")

    for prediction, gold, expected in [
        ("1,000", "1000.0", True),
        ("0.5", "1/2", True),
        ("3", "4", False),
        ("\\text{Yes}", "yes", True),
        ("1" * 100_001, "1" * 100_001, True),
        ("1" + "0" * 100_000, "1", False),
    ]:
        assert verify_math(prediction, gold, worker=NoWorker()) is expected


EXACT_CASES = [
    ("Yes.", "yes", True),
    (" $1,234.50$ ", "1234.5", True),
    ("\\text{B}", "b", True),
    ("1/2", "0.5", False),
    ("", "", False),
    ("12", "1,2", False),
]


@pytest.mark.parametrize("prediction, gold, expected", EXACT_CASES)
def test_exact(prediction, gold, expected):
    assert VERIFIERS["exact"](prediction, gold) is expected


NUMERIC_CASES = [
    ("1,000", "1000", True),
    ("1000.0", "1000", True),
    ("0.5", "1/2", True),
    ("50%", "50", True),  # the number as written, not 0.5
    ("50\\%", "50", True),
    ("$5", "5", True),
    ("5.", "5", True),
    ("1e3", "1000", True),
    ("0.30000001", "0.3", True),  # |diff| = 1e-8 <= 1e-6 * 0.3
    ("0.301", "0.3", False),
    ("1000001", "1000000", False),  # integers must match exactly
    ("99980000.0", "99980001", False),  # ... also against a decimal: 1e-6 of 1e8 is 100
    ("1234567.5", "1234567", False),
    ("4.9999999", "5", False),
    ("-3", "3", False),
    ("1/0", "1", False),
    ("1,00", "100", False),  # commas only in groups of three
    ("1e99999", "1", False),  # exponents past four digits are not numbers here
    ("seven", "7", False),
    ("1" * 5000, "1" * 5000, True),
    ("1" * 5000, "1" * 4999 + "2", False),
]


@pytest.mark.parametrize("prediction, gold, expected", NUMERIC_CASES, ids=lambda x: str(x)[:20])
def test_numeric(prediction, gold, expected):
    assert VERIFIERS["numeric"](prediction, gold) is expected


def test_parse_number_values():
    assert parse_number("1,234.5") == (parse_number("1234.5")[0], False)
    assert parse_number("-7") == (parse_number("-7.0")[0], True)
    assert str(parse_number("3/8")[0]) == "0.375"
    assert parse_number("1/2/3") is None and parse_number("") is None


CHOICE_CASES = [
    ("(B)", "B", "B"),
    ("B.", "B", "B"),
    ("b", "B", "B"),
    ("The answer is B", "B", "B"),
    ("The answer is: (C).", "C", "C"),
    ("Answer: option d", "D", "D"),
    ("C) 42", "C", "C"),
    ("\\text{(D)}", "D", "D"),
    ("I pick (A) here", "A", "A"),
    ("A", "B", "A"),
    ("answers vary", "A", None),
    ("I think B", "B", None),  # a bare letter inside a sentence is not trusted
    ("", "A", None),
]


@pytest.mark.parametrize("prediction, gold, letter", CHOICE_CASES)
def test_choice(prediction, gold, letter):
    assert parse_choice(prediction) == letter
    assert VERIFIERS["choice"](prediction, gold) is (letter == gold)


def test_choice_gold_forms():
    assert VERIFIERS["choice"]("b", "(B)") is True
    assert VERIFIERS["choice"]("b", "not a letter at all") is False


# -- the Verifier wrapper --------------------------------------------------------------------


def test_get_verifier_unknown_lists_names():
    with pytest.raises(DriftError, match="unknown verifier 'fuzzy'; known: choice, exact, math, numeric"):
        get_verifier("fuzzy")
    with pytest.raises(DriftError, match="timeout must be > 0"):
        Verifier("math", timeout=0)


def test_stats_count_calls_and_errors():
    v = Verifier("exact")
    assert v("a", "A") and not v("a", "b")
    v._fn = lambda prediction, gold: 1 / 0  # a buggy verifier: wrong, counted, never raised
    assert v("a", "a") is False
    assert v.stats == VerifierStats(calls=3, timeouts=0, errors=1)
    assert v.stats.as_dict() == {"calls": 3, "timeouts": 0, "errors": 1}


@pytest.fixture(scope="module")
def math_worker():
    worker = MathWorker()
    yield worker
    worker.close()


@pytest.fixture
def math_verifier(math_worker):
    """A fresh math Verifier (fresh stats) on this module's worker, with a 0.5 s limit."""
    v = Verifier("math", timeout=0.5, worker=math_worker)
    assert v("\\frac{1}{2}", "0.5")  # (re)boots the worker outside the timed part
    return v


@pytest.mark.parametrize("hostile", [TOWER, NESTED_FRAC], ids=["tower", "nested-frac"])
def test_math_timeout_main_thread(math_verifier, hostile):
    start = time.perf_counter()
    assert math_verifier(hostile, "2") is False
    elapsed = time.perf_counter() - start
    assert 0.45 < elapsed < 15.0  # the limit was enforced, not waited out (bound loose for loaded CI)
    assert math_verifier.stats == VerifierStats(calls=2, timeouts=1, errors=0)
    assert (
        Verifier("math", timeout=30.0, worker=math_verifier._fn.keywords["worker"])("\\sqrt{8}", "2\\sqrt{2}") is True
    )  # a fresh worker took over
    assert math_verifier.stats.calls == 2 and math_verifier.stats.timeouts == 1


def test_math_timeout_off_main_thread(math_verifier):
    results = []
    thread = threading.Thread(target=lambda: results.append(math_verifier(TOWER, "3")))
    start = time.perf_counter()
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive() and results == [False]
    assert time.perf_counter() - start < 15.0
    assert math_verifier.stats.timeouts == 1


def test_math_from_many_threads(math_worker):
    # a generous limit: calls queue for the one worker, and a loaded CI machine must not turn
    # slow-but-legal checks into timeouts
    math_verifier = Verifier("math", timeout=30.0, worker=math_worker)
    cases = [(p, g, e) for p, g, e in MATH_CASES if p and g] * 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda case: math_verifier(case[0], case[1]), cases))
    assert got == [e for _, _, e in cases]
    assert math_verifier.stats.timeouts == 0 and math_verifier.stats.errors == 0


def test_math_worker_killed_between_calls_restarts(math_verifier):
    worker = math_verifier._fn.keywords["worker"]
    worker._proc.kill()
    worker._proc.wait()
    assert math_verifier("\\frac{2}{4}", "0.5") is True


@pytest.mark.parametrize(
    "hostile",
    ["x" * (1 << 20), "\\frac{" * 3000 + "1" + "}{2}" * 3000, "1" + "0" * 100_000, "\\sqrt{" * 400 + "}" * 400],
    ids=["1MB", "deep-frac", "10**100000", "deep-sqrt"],
)
def test_math_inputs_too_big_for_math_verify_are_refused_at_once(math_verifier, hostile):
    """These never reach the worker (over MAX_MATH_CHARS, or a plain number); hostile inputs that
    do reach it are the timeout tests above."""
    start = time.perf_counter()
    assert math_verifier(hostile, "2") is False
    assert math_verifier("2", hostile) is False
    assert time.perf_counter() - start < 3.0  # too long for math-verify: refused at once


def test_math_never_evaluates_model_text(math_verifier, tmp_path):
    target = tmp_path / "pwned"
    attack = f"__import__('os').system('touch {target}')"
    assert math_verifier(attack, "0") is False
    assert math_verifier(f"eval(\"open('{target}', 'w')\")", "0") is False
    assert not target.exists()


FAKE_WORKERS = {
    "raises": 'import sys\nprint("ready", flush=True)\nfor line in sys.stdin:\n    print("e ValueError", flush=True)\n',
    "dies": 'import sys\nprint("ready", flush=True)\nsys.stdin.readline()\nsys.exit(3)\n',
    "never-ready": "import sys\nsys.exit(1)\n",
}


@pytest.mark.parametrize("kind", FAKE_WORKERS)
def test_math_worker_failures_count_as_errors(monkeypatch, kind):
    import drift.math_worker

    monkeypatch.setattr(drift.math_worker, "_WORKER_SOURCE", FAKE_WORKERS[kind])
    worker = MathWorker(startup_timeout=10)
    v = Verifier("math", timeout=5, worker=worker)
    assert v("\\frac{1}{2}", "0.5") is False and v("\\sqrt{4}", "2") is False
    assert v.stats == VerifierStats(calls=2, timeouts=0, errors=2)
    worker.close()


@pytest.mark.parametrize("verifier", ["exact", "math", "numeric"])
def test_long_numbers_that_differ_in_the_last_digit_differ(verifier):
    a, b = "1" + "0" * 27 + "1", "1" + "0" * 27 + "2"
    assert not get_verifier(verifier)(a, b) and get_verifier(verifier)(a, a)
    assert number_key(a) != number_key(b)


def test_spaces_between_digits_are_read_as_written():
    """Spaces were dropped before parsing: "1 1/2" read as 11/2 (5.5; a mixed number, 1.5) and
    "1, 234" (a list) as 1234. Thousands groups ("12 000") still read as one number."""
    from drift.verifiers import verify_exact, verify_numeric

    assert verify_math("1 1/2", "1.5") and verify_numeric("1 1/2", "3/2") and number_key("1 1/2") == "1.5"
    assert not verify_math("1 1/2", "5.5") and not verify_numeric("1 1/2", "11/2")
    assert not verify_exact("1 1/2", "11/2")
    assert verify_math("12 000", "12000") and verify_numeric("-1 234 567", "-1234567")
    assert not verify_math("1, 234", "1234") and not verify_numeric("1, 234", "1234")
    assert verify_numeric("-2 1/4", "-2.25")
