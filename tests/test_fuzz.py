"""Property-based fuzzing (hypothesis, bounded): extraction, record parsing, weighting.

Example counts are fixed here (``FUZZ_EXAMPLES``) and quoted in docs/reliability.md. atheris is
not used: hypothesis reaches the same parsers from Python with shrinking, and needs no build.
(tests/test_answers.py has a smaller extraction fuzz of its own; these go further: arbitrary bytes
as JSONL lines, random valid records through the weights, and a linear-time check.)
"""

import json
import math
import os
import tempfile
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drift.answers import MAX_ANSWER_CHARS, extract_answer, normalize_answer
from drift.records import FieldError, RecordError, Trajectory, iter_records, read_records, validate_record
from drift.records.schema import fast_core
from drift.weighting import compute_weights
from factories import make_record, weighting

FUZZ_EXAMPLES = {
    "extract": 300,
    "extract_linear": 100,
    "records_bytes": 300,
    "records_json": 300,
    "fast_path": 300,
    "fast_path_bytes": 300,
    "weights": 200,
}


def fuzz(name: str):
    return settings(
        max_examples=FUZZ_EXAMPLES[name],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Text that looks like model output: tags, braces, numbers, LaTeX, plus any unicode at all.
MARKUP = st.sampled_from(
    [
        "<answer>",
        "</answer>",
        "\\boxed{",
        "{",
        "}",
        "####",
        "\n",
        " ",
        "-",
        ".",
        ",",
        "\\frac",
        "$",
        "1",
        "42",
        "3.5",
        "1,000",
        "(B)",
        "answer is ",
        "\x00",
    ]
)
TEXT = st.lists(MARKUP | st.text(max_size=8), max_size=60).map("".join) | st.text(max_size=400)


@fuzz("extract")
@given(TEXT, st.sampled_from(["strict", "lenient", ("boxed",), ("hash",), ("last_number",)]))
def test_extract_answer_never_raises(text, mode):
    found = extract_answer(text, mode=mode)
    if found is not None:
        assert found == found.strip() and found and len(found) <= MAX_ANSWER_CHARS
        assert found in text
        assert isinstance(normalize_answer(found), str)


@fuzz("extract_linear")
@given(st.lists(MARKUP, min_size=1, max_size=20).map("".join))
def test_extract_answer_is_linear(unit):
    # the unit repeated to ~200 KB: one pass each; a quadratic scan would take minutes
    text = unit * (200_000 // len(unit) + 1)
    start = time.perf_counter()
    extract_answer(text, mode="lenient")
    assert time.perf_counter() - start < 10.0  # loose: milliseconds expected, the machine may be loaded


def _good_line() -> dict:
    return make_record("p0", 0, ["4", None, "5"], first_correct=3, weight=1.5)


def _mutations():
    """A valid record with one field replaced by an arbitrary JSON value (or removed)."""
    json_value = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
        max_leaves=10,
    )
    fields = st.sampled_from(
        sorted(_good_line())
        + ["return", "messages.0", "messages.2.role", "messages.2.content", "rewards.0", "correct.1", "answers.0"]
    )

    def mutate(field, value, drop):
        rec = _good_line()
        target, key = rec, field
        if "." in field:
            parts = field.split(".")
            for p in parts[:-1]:
                target = target[p] if isinstance(target, dict) else target[int(p)]
            key = parts[-1] if isinstance(target, dict) else int(parts[-1])
        if drop and isinstance(target, dict):
            target.pop(key, None)
        else:
            target[key] = value
        return json.dumps(rec, allow_nan=True).encode()

    return st.builds(mutate, fields, json_value, st.booleans())


def _read(lines: list[bytes]):
    """iter_records over ``lines`` written to a file: the records, or the RecordError."""
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\n".join(lines) + b"\n")
        try:
            return [rec for _, rec in iter_records(path)], None
        except RecordError as e:
            return None, e
    finally:
        os.unlink(path)


@fuzz("records_bytes")
@given(st.lists(st.binary(max_size=200) | st.just(json.dumps(_good_line()).encode()), max_size=5))
def test_iter_records_on_arbitrary_bytes(lines):
    lines = [line.replace(b"\n", b" ") for line in lines]
    records, error = _read(lines)
    if error is not None:
        assert error.path.endswith(".jsonl") and error.line is not None and 1 <= error.line <= len(lines)
    else:
        assert len(records) == sum(1 for line in lines if line.strip())


@fuzz("records_json")
@given(_mutations())
def test_iter_records_on_mutated_records(line):
    records, error = _read([line])
    if error is None:  # accepted: then it must be a schema-1 record the weighting can use
        (rec,) = records
        compute_weights(records, weighting())
        assert rec["format_errors"] == rec["answers"].count(None)
    else:
        assert error.line == 1 and ("field" in str(error) or "JSON" in str(error))


def _slow_verdict(line: bytes):
    """What the precise (slow) validator says: the record, or None if it rejects the line."""
    try:
        return validate_record(json.loads(line.decode("utf-8")))
    except (ValueError, FieldError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None


def test_fast_path_takes_the_usual_record():  # else the two tests below would check nothing
    line = json.dumps(_good_line()).encode()
    assert fast_core(line) == Trajectory.of(json.loads(line))


@fuzz("fast_path")
@given(_mutations())
def test_fast_path_never_accepts_what_validation_rejects(line):
    core = fast_core(line)
    if core is not None:
        rec = _slow_verdict(line)
        assert rec is not None, line
        assert core == Trajectory.of(rec)


@fuzz("fast_path_bytes")
@given(st.integers(0, 10**6), st.binary(min_size=1, max_size=4), st.sampled_from(["insert", "replace", "delete"]))
def test_fast_path_on_corrupted_bytes(position, chunk, how):
    rec = {
        **_good_line(),
        "question": "Combien font 2+3 ? Réponds.",
        "sampling": {"note": "été"},
    }  # fields the fast path skips
    line = json.dumps(rec, ensure_ascii=False).replace("5", "é5").encode()  # and UTF-8 in the ones it reads
    i = position % len(line)
    line = {
        "insert": line[:i] + chunk + line[i:],
        "replace": line[:i] + chunk + line[i + len(chunk) :],
        "delete": line[:i] + line[i + len(chunk) :],
    }[how].replace(b"\n", b" ")
    core = fast_core(line)
    if core is not None:
        rec = _slow_verdict(line)
        assert rec is not None, line
        assert core == Trajectory.of(rec)
    # and reading it after a good first line (where the fast path is on) agrees with the slow verdict
    _records, error = _read([json.dumps(_good_line()).encode().replace(b'"p0"', b'"p1"'), line])
    assert (error is None) == (_slow_verdict(line) is not None or not line.strip())


def _group(draw, prompt_id: str, k: int) -> list[dict]:
    recs = []
    answer = st.none() | st.sampled_from(["1", "2", "3", "4"])
    for traj in range(k):
        answers = draw(st.lists(answer, min_size=1, max_size=5))
        first = draw(st.none() | st.integers(1, len(answers)))
        if first is not None:
            answers = answers[:first]  # the episode stops at the first correct turn
            answers[-1] = answers[-1] or "4"
        recs.append(make_record(prompt_id, traj, answers, first_correct=first))
    return recs


@st.composite
def record_sets(draw):
    groups = draw(st.integers(1, 4))
    return [rec for g in range(groups) for rec in _group(draw, f"p{g}", draw(st.integers(1, 6)))]


@fuzz("weights")
@given(
    record_sets(),
    st.floats(0.001, 100.0),
    st.floats(0.0, 1.0),
    st.floats(0.0, 2.0),
    st.floats(0.0, 1.0),
    st.sampled_from(["keep", "drop"]),
)
def test_weights_finite_and_mean_one_per_group(records, beta, gamma, lam, penalty, zero_variance):
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    with os.fdopen(fd, "w") as f:  # the records are valid: they must read back
        f.write("".join(json.dumps(r) + "\n" for r in records))
    try:
        records = read_records(path)
    finally:
        os.unlink(path)
    params = weighting(beta=beta, gamma=gamma, lam=lam, format_penalty=penalty, zero_variance=zero_variance)
    returns, weights = compute_weights(records, params)
    assert all(math.isfinite(r) for r in returns)
    groups: dict[str, list[float]] = {}
    for rec, w in zip(records, weights):
        if w is not None:
            assert math.isfinite(w) and w >= 0.0
            groups.setdefault(rec["prompt_id"], []).append(w)
    for ws in groups.values():
        assert math.fsum(ws) / len(ws) == __import__("pytest").approx(1.0, rel=1e-9)
        assert max(ws) >= 1.0 - 1e-12  # the best trajectory of a group is never below the mean
