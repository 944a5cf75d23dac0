"""Schema validation, bad input with file:line:field, the reference-format round trip, atomic writes."""

import json

import pytest
from msgspec import UNSET

from drift import DriftError
from drift.outputs import atomic_write
from drift.records import (
    FieldError,
    RecordError,
    Trajectory,
    from_reference,
    iter_records,
    read_records,
    to_reference,
    validate_record,
    write_records,
    write_spliced,
)
from drift.records.schema import fast_core
from factories import REFERENCE_SAMPLE as REFERENCE


def good(**over):
    rec = {
        "schema": 1,
        "prompt_id": "p0",
        "traj_id": 0,
        "gold": "4",
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<answer>5</answer>"},
            {"role": "user", "content": "Incorrect."},
            {"role": "assistant", "content": "<answer>4</answer>"},
        ],
        "answers": ["5", "4"],
        "correct": [False, True],
        "rewards": [0.0, 1.0],
        "format_errors": 0,
        "first_correct_turn": 2,
    }
    rec.update(over)
    return rec


def write_lines(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else (line + "\n").encode() for line in lines))
    return path


def test_valid_record_round_trips(tmp_path):
    recs = [good(), good(traj_id=1)]
    write_records(tmp_path / "a.jsonl", recs)
    assert read_records(tmp_path / "a.jsonl") == recs


BAD = [
    ('{"schema": 1, "prompt_id": "p0"', "invalid JSON"),
    (json.dumps(good(correct=[0, 1])), "field 'correct' must be a list of booleans"),
    (json.dumps(good(rewards=[0.0, "1"])), "field 'rewards'"),
    (json.dumps(good(rewards=[0.0, float("nan")])), "field 'rewards' must be a list of finite numbers"),
    (json.dumps(good(rewards=[0.0, float("inf")])), "field 'rewards' must be a list of finite numbers"),
    (json.dumps({k: v for k, v in good().items() if k != "prompt_id"}), "field 'prompt_id'"),
    (json.dumps(good(messages=[{"role": "robot", "content": "x"}])), "field 'messages[0].role'"),
    (json.dumps(good(answers=["5"])), "field 'answers' has 1 entries for 2 assistant turns"),
    (json.dumps(good(first_correct_turn=1)), "field 'first_correct_turn'"),
    (json.dumps(good(format_errors=1)), "field 'format_errors'"),
    (json.dumps(good(schema=2)), "field 'schema'"),
    (json.dumps(good(traj_id="0")), "field 'traj_id'"),
    (json.dumps(good(weight=-1.0)), "field 'weight' must be >= 0"),
    (json.dumps(good(max_turns=3.0)), "field 'max_turns'"),
    (json.dumps(good(max_turns="5")), "field 'max_turns'"),
    (json.dumps(good(max_turns=1)), "field 'max_turns' must be an integer >= 2"),  # 2 turns taken
    (json.dumps([1, 2]), "must be a JSON object"),
    (b'{"prompt_id": "\xff\xfe"}\n', "not valid UTF-8"),
]


@pytest.mark.parametrize("line,message", BAD)
def test_bad_line_names_file_line_and_field(tmp_path, line, message):
    path = write_lines(tmp_path / "rollouts.jsonl", [json.dumps(good(traj_id=7)), line])
    with pytest.raises(RecordError) as err:
        read_records(path)
    assert str(err.value).startswith(f"{path}:2: ")
    assert message in str(err.value)
    assert err.value.line == 2


def test_empty_file_and_missing_file(tmp_path):
    empty = write_lines(tmp_path / "empty.jsonl", [])
    with pytest.raises(RecordError, match="empty"):
        read_records(empty)
    assert read_records(empty, allow_empty=True) == []
    with pytest.raises(RecordError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")


def test_duplicate_ids_are_an_error(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(good()), "", json.dumps(good())])
    with pytest.raises(RecordError, match=r"d.jsonl:3: field 'traj_id': duplicate .* first on line 1"):
        read_records(path)


def test_mixed_formats_are_an_error(tmp_path):
    ref_line = REFERENCE.read_text().splitlines()[0]
    path = write_lines(tmp_path / "m.jsonl", [json.dumps(good()), ref_line])
    with pytest.raises(RecordError, match=r"m.jsonl:2: .*mixed formats"):
        read_records(path)


def test_reference_import_matches_raw_fields():
    raw = [json.loads(line) for line in REFERENCE.read_text().splitlines()]
    recs = read_records(REFERENCE)
    assert len(recs) == len(raw) == 48
    for r, rec in zip(raw, recs):
        validate_record(rec)
        assert rec["first_correct_turn"] == r["t_star"]
        assert [a for a in rec["answers"] if a is not None] == r["answer_norms"]
        assert rec["format_errors"] * -0.1 == pytest.approx(r["format_penalty"])
        assert rec["max_turns"] == 5
    # traj_id numbers the trajectories of each prompt in file order
    assert [rec["traj_id"] for rec in recs[:5]] == [0, 1, 2, 3, 0]


def test_reference_round_trip_is_exact(tmp_path):
    recs = read_records(REFERENCE)
    write_records(tmp_path / "back.jsonl", recs, to_format="reference", format_penalty=0.1)
    original = [json.loads(line) for line in REFERENCE.read_text().splitlines()]
    back = [json.loads(line) for line in (tmp_path / "back.jsonl").read_text().splitlines()]
    assert back == original


def test_reference_answers_align_with_parsable_turns():
    ref = {
        "prompt_id": "x",
        "gold": "80",
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "I think 80"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "<answer>80</answer>"},
        ],
        "verifier": {"t1": 0, "t2": 1, "t3": 0},
        "turn_rewards": {"t1": 0.0, "t2": 1.0, "t3": 0.0},
        "t_star": 2,
        "answer_norms": ["80"],
        "format_penalty": -0.1,
        "reward_details": {},
    }
    rec = from_reference(ref, traj_id=0)
    assert rec["answers"] == [None, "80"] and rec["format_errors"] == 1 and rec["max_turns"] == 3
    assert to_reference(rec, format_penalty=0.1) == ref


def test_atomic_write_leaves_old_output_on_error(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    with pytest.raises(RuntimeError):
        with atomic_write(out) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert out.read_text() == "precious\n"
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize(
    "reward,ok", [(1, True), (2**1024 - 2**970 - 1, True), (2**1024 - 2**970, False), (True, False)]
)
def test_fast_path_and_validation_agree_on_numbers_at_the_float_limit(reward, ok):
    line = json.dumps(good(rewards=[0.0, reward])).encode()
    assert (fast_core(line) is not None) == ok
    if ok:
        validate_record(json.loads(line))
    else:
        with pytest.raises(FieldError, match="'rewards'"):
            validate_record(json.loads(line))


def test_typed_reading_gives_the_cores_of_the_records(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = [good(), good(traj_id=1, rewards=[0, 1]), good(traj_id=2, weight=0.5, extra={"x": [1]})]
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    typed = [core for _, core in iter_records(path, typed=True)]
    assert typed == [Trajectory.of(r) for r in read_records(path)]
    assert typed[1].rewards == [0.0, 1.0] and typed[2].weight == 0.5 and typed[0].weight is UNSET


def _pairs_without_duplicates(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate key in {keys}"
    return dict(pairs)


def test_write_spliced_adds_fields_without_reserialising(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    recs = [good(), good(traj_id=1), good(traj_id=2, weight=2.0, **{"return": 0.3})]
    lines = [
        json.dumps(recs[0]),
        "",
        json.dumps(recs[1], indent=None, separators=(", ", ": ")) + " \r",
        json.dumps(recs[2]),
    ]
    src.write_text("\n".join(lines) + "\n")
    n = write_spliced(
        src, out, {"return": [0.5, 0.25, 1.0], "weight": [1.5, 1e-300, 0.0]}, keep=[True, False, True], rewrite={2}
    )
    assert n == 2
    got = [json.loads(line, object_pairs_hook=_pairs_without_duplicates) for line in out.read_text().splitlines()]
    assert got == [{**recs[0], "return": 0.5, "weight": 1.5}, {**recs[2], "return": 1.0, "weight": 0.0}]
    assert out.read_bytes().splitlines()[0].startswith(lines[0][:-1].encode())  # the original bytes, extended
    with pytest.raises(DriftError, match="changed while"):
        write_spliced(src, out, {"weight": [1.0, 1.0]}, keep=[True, True])


def test_invalid_utf8_in_a_field_the_fast_path_skips_is_still_an_error(tmp_path):
    # msgspec does not check the bytes of fields it skips; the reader must
    line = json.dumps(good(traj_id=1, question="été"), ensure_ascii=False).encode().replace("été".encode(), b"\xff\xfe")
    assert fast_core(line) is None
    path = tmp_path / "r.jsonl"
    path.write_bytes(json.dumps(good()).encode() + b"\n" + line + b"\n")
    with pytest.raises(RecordError, match=r"r\.jsonl:2: line is not valid UTF-8"):
        read_records(path)


def _near_misses():
    """Records that differ from a valid one in one way each check of the fast path exists for."""
    msgs = good()["messages"]
    yield "format_errors off by one", good(format_errors=1)
    yield "format_errors as bool", good(format_errors=False)
    yield "first_correct_turn wrong", good(first_correct_turn=1)
    yield "first_correct_turn missing", {k: v for k, v in good().items() if k != "first_correct_turn"}
    yield "solved but first_correct_turn null", good(first_correct_turn=None)
    yield "one answer too many", good(answers=["5", "4", "3"], format_errors=0)
    yield "one reward too few", good(rewards=[1.0])
    yield "one correct too many", good(correct=[False, True, False])
    yield "no assistant turn", good(messages=msgs[:2], answers=[], correct=[], rewards=[], first_correct_turn=None)
    yield "unknown role", good(messages=[{**msgs[0], "role": "bot"}, *msgs[1:]])
    yield "content not a string", good(messages=[{**msgs[0], "content": 5}, *msgs[1:]])
    yield "negative traj_id", good(traj_id=-1)
    yield "empty prompt_id", good(prompt_id="")
    yield "schema 2", good(schema=2)
    yield "reward is a bool", good(rewards=[False, True])
    yield "correct holds an int", good(correct=[0, True])
    yield "negative weight", good(weight=-0.5)
    yield "weight not a number", good(weight="1")
    yield "return not a number", good(**{"return": None})
    yield "valid, integer rewards", good(rewards=[0, 1])
    yield "valid, with weight and return", good(weight=0.0, **{"return": -1.5})
    yield "valid, extra fields", good(question="2+2?", sampling={"temperature": 1.0})


@pytest.mark.parametrize("name,rec", list(_near_misses()), ids=[n for n, _ in _near_misses()])
def test_fast_path_agrees_with_validation_on_near_misses(name, rec):
    line = json.dumps(rec).encode()
    core = fast_core(line)
    try:
        validate_record(json.loads(line))
        valid = True
    except FieldError:
        valid = False
    assert valid == name.startswith("valid"), "the case itself is mislabelled"
    if valid:
        assert core == Trajectory.of(json.loads(line))
    else:
        assert core is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("weight", -2.0),
        ("weight", float("nan")),
        ("finish_reasons", "stop"),
        ("answer_turns", [9]),
        ("answer_turns", "1"),
    ],
)
def test_reference_records_are_checked_like_ours(tmp_path, field, value):
    """A bad field carried through from the reference layout (a negative or NaN weight) once reached
    training unchecked; in drift's layout the same record is refused with file, line and field."""
    lines = REFERENCE.read_text().splitlines()
    bad = json.loads(lines[1])
    bad[field] = value
    path = tmp_path / "ref.jsonl"
    path.write_text("\n".join([lines[0], json.dumps(bad), *lines[2:]]) + "\n")
    with pytest.raises(RecordError, match=rf"{path}:2: .*{field}"):
        read_records(path)


def test_to_reference_accepts_a_null_max_turns():
    rec = good(max_turns=None)
    validate_record(rec)
    ref = to_reference(rec, format_penalty=0.1)
    assert ref["verifier"] == {"t1": 0, "t2": 1} and ref["turn_rewards"] == {"t1": 0.0, "t2": 1.0}


@pytest.mark.parametrize(
    "replies, answers",
    [
        # a tag whose answer normalises to nothing is a format error, though a tag is there
        (["<answer>.</answer>", "<answer>70</answer>", "<answer>80</answer>"], [None, "70", "80"]),
        # lenient parsing found an answer outside any tag
        (["<answer>70</answer>", "it is 80"], ["70", "80"]),
    ],
)
def test_drift_to_reference_and_back_keeps_which_turns_had_an_answer(replies, answers):
    messages = [{"role": "user", "content": "q"}]
    for i, reply in enumerate(replies):
        if i:
            messages.append({"role": "user", "content": "Incorrect. Please think again."})
        messages.append({"role": "assistant", "content": reply})
    correct = [False] * (len(replies) - 1) + [True]
    rec = good(
        messages=messages,
        answers=answers,
        correct=correct,
        rewards=[float(c) for c in correct],
        format_errors=answers.count(None),
        first_correct_turn=len(replies),
        max_turns=5,
        gold="80",
    )
    validate_record(rec)
    back = from_reference(to_reference(rec, format_penalty=0.1), traj_id=0)
    assert back == rec
