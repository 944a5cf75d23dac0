"""The trajectory record: one JSON object per line, shared by every stage.

Schema version 1 (turn ``t`` lives at index ``t-1`` of every per-turn list)::

    schema              1
    prompt_id           str    groups trajectories of one prompt (the Z(x) of the weights)
    traj_id             int    0..K-1 within the prompt
    messages            list   [{"role": "system"|"user"|"assistant"|"tool", "content": str}]
    answers             list   normalised answer per turn, null where none could be parsed
    correct             list   bool per turn
    rewards             list   r_t per turn (1.0 on the correct turn)
    format_errors       int    turns with no parsable answer (= answers.count(null))
    first_correct_turn  int|null
    optional: finish_reasons (list: "stop" | "length" | null per turn: why the reply ended, null
    = unknown, as in records of the reference layout), token_ids (list per turn of the ids the
    policy sampled, end token included, or null where unknown: what drift train trains), task,
    question, gold, max_turns, sampling, model, ...; added by `drift weight`: return, weight

Stages only add fields; unknown fields are carried through untouched.

The DRIFT reference code writes another layout (``turn_rewards: {"t1": 0.0, ...}``,
``verifier``, ``t_star``, ``answer_norms`` holding only the parsable answers, ``format_penalty``).
:func:`read_records` detects it per file and converts it; :func:`to_reference` writes it back.

Reading is strict: the first bad line stops the read with ``file:line: field '...' ...``.
Whole-file outputs go through :func:`atomic_write`, so a failure never leaves a torn or
clobbered output.
"""

from __future__ import annotations

import gc
import json
import math
import os
from collections.abc import Container, Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Literal, get_args

import msgspec
import orjson

from drift import DriftError
from drift.answers import extract_answer
from drift.metrics import first_correct_turn

SCHEMA_VERSION = 1
Role = Literal["system", "user", "assistant", "tool"]
ROLES = frozenset(get_args(Role))
FORMATS = ("drift", "reference")
FINISH_REASONS = ("stop", "length")
"""Why a reply ended: at an end token, or at the length limit (``null`` in a record: unknown)."""
_REFERENCE_KEYS = ("turn_rewards", "verifier", "t_star", "answer_norms", "format_penalty")


class RecordError(DriftError):
    """A bad record: says where (file and 1-based line) and which field."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class FieldError(ValueError):
    """Raised by the validators; :func:`iter_records` adds file and line."""


# -- validation ------------------------------------------------------------------------------


def _is_number(x) -> bool:
    """A finite float, or an int that converts to one (bool is not a number here)."""
    if type(x) is float:
        return math.isfinite(x)
    if type(x) is not int:
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # too large for a float
        return False


def _check_messages(messages) -> int:
    """Validate a message list; return the number of assistant turns."""
    if not isinstance(messages, list) or not messages:
        raise FieldError("field 'messages' must be a non-empty list")
    try:  # fast path for the usual well-formed list; the loop below finds and names any problem
        if all(type(m) is dict and type(m["content"]) is str for m in messages):
            roles = [m["role"] for m in messages]
            if ROLES.issuperset(roles) and "assistant" in roles:
                return roles.count("assistant")
    except (KeyError, TypeError):
        pass
    turns = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise FieldError(f"field 'messages[{i}]' must be an object with a string 'content'")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise FieldError(f"field 'messages[{i}].role' must be one of {sorted(ROLES)}, got {role!r}")
        turns += role == "assistant"
    if turns == 0:
        raise FieldError("field 'messages' has no assistant turn")
    return turns


def _check_id(rec: dict) -> None:
    if not isinstance(rec.get("prompt_id"), str) or not rec["prompt_id"]:
        raise FieldError("field 'prompt_id' must be a non-empty string")


class Message(msgspec.Struct):
    role: Role
    content: str


class Trajectory(msgspec.Struct):
    """The typed core of a schema-1 record: what every stage relies on, no unknown fields.

    Reading checks a line against it in C (msgspec), then :func:`_consistent` checks the fields
    against each other; a line that fails either goes to :func:`validate_record`, which names the
    problem. The tests check that this fast path never accepts what that rejects.
    """

    schema: Literal[1]
    prompt_id: Annotated[str, msgspec.Meta(min_length=1)]
    traj_id: Annotated[int, msgspec.Meta(ge=0)]
    messages: list[Message]
    answers: list[str | None]
    correct: list[bool]
    rewards: list[float]
    format_errors: int
    first_correct_turn: int | None
    finish_reasons: list[Literal[FINISH_REASONS] | None] | msgspec.UnsetType = msgspec.UNSET
    token_ids: list[list[Annotated[int, msgspec.Meta(ge=0)]] | None] | msgspec.UnsetType = msgspec.UNSET
    return_: float | msgspec.UnsetType = msgspec.field(name="return", default=msgspec.UNSET)
    weight: Annotated[float, msgspec.Meta(ge=0)] | msgspec.UnsetType = msgspec.UNSET

    @classmethod
    def of(cls, rec: dict) -> Trajectory:
        """The core of a record :func:`validate_record` accepted."""
        return cls(
            SCHEMA_VERSION, rec["prompt_id"], rec["traj_id"], [Message(m["role"], m["content"]) for m in rec["messages"]],
            rec["answers"], rec["correct"], [float(r) for r in rec["rewards"]], int(rec["format_errors"]),
            rec["first_correct_turn"] and int(rec["first_correct_turn"]),
            rec.get("finish_reasons", msgspec.UNSET),
            rec.get("token_ids", msgspec.UNSET),
            float(rec["return"]) if "return" in rec else msgspec.UNSET,
            float(rec["weight"]) if "weight" in rec else msgspec.UNSET,
        )


_decode_core = msgspec.json.Decoder(Trajectory).decode
_role = attrgetter("role")


def _consistent(t: Trajectory) -> bool:
    turns = list(map(_role, t.messages)).count("assistant")
    return (
        turns > 0 and turns == len(t.correct) == len(t.rewards) == len(t.answers)
        and t.format_errors == t.answers.count(None)
        and t.first_correct_turn == first_correct_turn(t.correct)
        and (t.finish_reasons is msgspec.UNSET or len(t.finish_reasons) == turns)
        and (t.token_ids is msgspec.UNSET or len(t.token_ids) == turns)
    )  # msgspec rejects numbers out of float range, so every float here is finite


def _fast_core(raw: bytes) -> Trajectory | None:
    """The core of a well-formed schema-1 line, or ``None`` (the slow path then finds the problem)."""
    try:
        core = _decode_core(raw)
    except (msgspec.MsgspecError, ValueError):  # ValueError: bad UTF-8 in a field it decodes
        return None
    if not raw.isascii():  # msgspec skips unknown fields without checking their UTF-8
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return core if _consistent(core) else None


def validate_record(rec) -> dict:
    """Check a schema-1 record in place and return it; raise :class:`FieldError` if it is bad.

    >>> rec = {"schema": 1, "prompt_id": "p0", "traj_id": 0,
    ...        "messages": [{"role": "user", "content": "2+2?"},
    ...                     {"role": "assistant", "content": "<answer>4</answer>"}],
    ...        "answers": ["4"], "correct": [True], "rewards": [1.0],
    ...        "format_errors": 0, "first_correct_turn": 1}
    >>> validate_record(rec)["first_correct_turn"]
    1
    >>> validate_record({**rec, "correct": ["yes"]})
    Traceback (most recent call last):
    ...
    drift.records.FieldError: field 'correct' must be a list of booleans
    """
    if not isinstance(rec, dict):
        raise FieldError("a record must be a JSON object")
    if rec.get("schema") != SCHEMA_VERSION:
        raise FieldError(f"field 'schema' must be {SCHEMA_VERSION}, got {rec.get('schema')!r}")
    _check_id(rec)
    traj_id = rec.get("traj_id")
    if not isinstance(traj_id, int) or isinstance(traj_id, bool) or traj_id < 0:
        raise FieldError("field 'traj_id' must be a non-negative integer")
    turns = _check_messages(rec.get("messages"))
    correct, rewards, answers = rec.get("correct"), rec.get("rewards"), rec.get("answers")
    if not isinstance(correct, list) or not all(isinstance(c, bool) for c in correct):
        raise FieldError("field 'correct' must be a list of booleans")
    if not isinstance(rewards, list) or not all(_is_number(r) for r in rewards):
        raise FieldError("field 'rewards' must be a list of finite numbers")
    if not isinstance(answers, list) or not all(a is None or isinstance(a, str) for a in answers):
        raise FieldError("field 'answers' must be a list of strings or nulls")
    finish = rec.get("finish_reasons", [None] * turns)
    if not isinstance(finish, list) or not all(f is None or f in FINISH_REASONS for f in finish):
        raise FieldError("field 'finish_reasons' must be a list of \"stop\", \"length\" or null")
    ids = rec.get("token_ids", [None] * turns)
    if not isinstance(ids, list) or not all(x is None or isinstance(x, list) and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x) for x in ids):
        raise FieldError("field 'token_ids' must be a list of lists of non-negative integers or nulls")
    for name, values in (("answers", answers), ("correct", correct), ("rewards", rewards),
                         ("finish_reasons", finish), ("token_ids", ids)):
        if len(values) != turns:
            raise FieldError(f"field '{name}' has {len(values)} entries for {turns} assistant turns")
    if rec.get("format_errors") != answers.count(None) or isinstance(rec.get("format_errors"), bool):
        raise FieldError(f"field 'format_errors' must equal the number of null answers ({answers.count(None)})")
    first = first_correct_turn(correct)
    if rec.get("first_correct_turn", "missing") != first:
        raise FieldError(f"field 'first_correct_turn' must be {first} (the first true entry of 'correct')")
    for name in ("return", "weight"):
        if name in rec and not _is_number(rec[name]):
            raise FieldError(f"field '{name}' must be a finite number")
    if "weight" in rec and rec["weight"] < 0:
        raise FieldError("field 'weight' must be >= 0")
    return rec


def _check_reference(rec: dict) -> int:
    _check_id(rec)
    turns = _check_messages(rec.get("messages"))
    for name in ("turn_rewards", "verifier"):
        table = rec.get(name)
        if not isinstance(table, dict):
            raise FieldError(f"field '{name}' must be an object like {{\"t1\": ...}}")
        for t in range(1, turns + 1):
            if not _is_number(table.get(f"t{t}")):
                raise FieldError(f"field '{name}.t{t}' must be a finite number")
    norms = rec.get("answer_norms")
    if not isinstance(norms, list) or not all(isinstance(a, str) for a in norms) or len(norms) > turns:
        raise FieldError(f"field 'answer_norms' must be a list of at most {turns} strings")
    t_star = rec.get("t_star")
    if t_star is not None and (not isinstance(t_star, int) or isinstance(t_star, bool) or not 1 <= t_star <= turns):
        raise FieldError(f"field 't_star' must be null or an integer in 1..{turns}")
    if not _is_number(rec.get("format_penalty", 0.0)):
        raise FieldError("field 'format_penalty' must be a finite number")
    return turns


# -- reference-format conversion -------------------------------------------------------------


def from_reference(rec: dict, traj_id: int) -> dict:
    """Convert one reference-format record to schema 1 (``traj_id`` is its index in its group).

    ``answer_norms`` holds only the parsable answers; they are put back on the turns whose
    reply has an ``<answer>`` tag. Where the reference parser disagreed with ours they fill the
    first turns in order: the return only depends on how many answers there are and which are
    distinct, so the weights are the same either way.
    """
    turns = _check_reference(rec)
    norms = rec["answer_norms"]
    replies = [m["content"] for m in rec["messages"] if m["role"] == "assistant"]
    parsed = [extract_answer(r) is not None for r in replies]
    if sum(parsed) != len(norms):
        parsed = [t < len(norms) for t in range(turns)]
    it = iter(norms)
    answers = [next(it) if ok else None for ok in parsed]
    correct = [bool(rec["verifier"][f"t{t}"]) for t in range(1, turns + 1)]
    first = first_correct_turn(correct)
    if rec.get("t_star") != first:
        raise FieldError(f"field 't_star' is {rec.get('t_star')!r} but 'verifier' first passes at turn {first}")
    out = {"schema": SCHEMA_VERSION, "prompt_id": rec["prompt_id"], "traj_id": traj_id}
    extra = {k: v for k, v in rec.items() if k not in _REFERENCE_KEYS and k not in out}
    if "gold" in extra and isinstance(extra["gold"], (int, float)):
        extra["gold"] = str(extra["gold"])
    out.update(extra)
    out.update(
        answers=answers,
        correct=correct,
        rewards=[float(rec["turn_rewards"][f"t{t}"]) for t in range(1, turns + 1)],
        format_errors=answers.count(None),
        first_correct_turn=first,
        max_turns=max(len(rec["turn_rewards"]), turns),
    )
    return out


def to_reference(rec: dict, format_penalty: float = 0.1) -> dict:
    """Write a schema-1 record in the reference layout (inverse of :func:`from_reference`).

    >>> rec = {"schema": 1, "prompt_id": "p0", "traj_id": 0, "gold": "4", "max_turns": 2,
    ...        "messages": [{"role": "user", "content": "2+2?"},
    ...                     {"role": "assistant", "content": "<answer>4</answer>"}],
    ...        "answers": ["4"], "correct": [True], "rewards": [1.0],
    ...        "format_errors": 0, "first_correct_turn": 1}
    >>> ref = to_reference(rec)
    >>> ref["verifier"], ref["turn_rewards"], ref["t_star"]
    ({'t1': 1, 't2': 0}, {'t1': 1.0, 't2': 0.0}, 1)
    """
    turns = len(rec["correct"])
    horizon = max(rec.get("max_turns", turns), turns)
    out = {"prompt_id": rec["prompt_id"]}
    skip = {"schema", "traj_id", "answers", "correct", "rewards", "format_errors", "first_correct_turn", "max_turns"}
    out.update({k: v for k, v in rec.items() if k not in skip and k not in out})
    out["verifier"] = {f"t{t}": int(rec["correct"][t - 1]) if t <= turns else 0 for t in range(1, horizon + 1)}
    out["turn_rewards"] = {
        f"t{t}": float(rec["rewards"][t - 1]) if t <= turns else 0.0 for t in range(1, horizon + 1)
    }
    out.setdefault("reward_details", {})
    out["t_star"] = rec["first_correct_turn"]
    out["answer_norms"] = [a for a in rec["answers"] if a is not None]
    out["format_penalty"] = round(-format_penalty * rec["format_errors"], 10)
    return out


# -- reading ---------------------------------------------------------------------------------


def _parse_line(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # Slow path for a precise message: stdlib json accepts NaN/Infinity, so the validator
    # can name the field that holds one; anything else really is broken JSON.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FieldError(f"line is not valid UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise FieldError(f"invalid JSON ({e.msg} at column {e.colno}); truncated line?") from None
    except RecursionError:
        raise FieldError("invalid JSON (nested too deeply)") from None
    except ValueError as e:  # an integer past Python's 4300-digit limit
        raise FieldError(f"invalid JSON ({e})") from None
    try:  # stdlib json also accepts lone surrogate escapes ("\\ud800"), which no writer can encode
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise FieldError(f"field '{_surrogate_field(value)}' holds a lone UTF-16 surrogate (not valid Unicode)") from None
    return value


def _surrogate_field(value, where: str = "") -> str:
    """Dotted path of the first string (or key) in ``value`` that is not encodable as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "(line)"
    elif isinstance(value, dict):
        for k, v in value.items():
            found = _surrogate_field(k, where) or _surrogate_field(v, f"{where}.{k}" if where else k)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_field(v, f"{where}[{i}]")
            if found:
                return found
    return ""


def detect_format(rec) -> str:
    """``"reference"`` for the DRIFT reference layout, else ``"drift"``.

    >>> detect_format({"prompt_id": "a", "turn_rewards": {"t1": 1.0}})
    'reference'
    """
    return "reference" if isinstance(rec, dict) and "turn_rewards" in rec and "schema" not in rec else "drift"


def file_format(path: str | os.PathLike) -> str | None:
    """The layout of a file, from its first non-blank line (``None`` if that is not JSON, or no line)."""
    if not Path(path).is_file():
        return None
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    return detect_format(orjson.loads(raw))
                except orjson.JSONDecodeError:
                    return None
    return None


def iter_records(path: str | os.PathLike, *, typed: bool = False) -> Iterator[tuple[int, dict | Trajectory]]:
    """Yield ``(line_number, record)`` in schema 1, validating every line (blank lines skipped).

    The format (ours or the reference code's) is detected from the first record; a file
    mixing both is an error. ``typed=True`` yields each record's :class:`Trajectory` core instead
    of the whole dict: about twice as fast on big files, for readers that need only the numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, None, "no such file")
    fmt = None
    group_sizes: dict[str, int] = {}
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            core = _fast_core(raw) if fmt == "drift" else None
            if core is not None:
                if typed:
                    yield line_no, core
                    continue
                try:
                    yield line_no, orjson.loads(raw)
                    continue
                except orjson.JSONDecodeError:
                    pass  # the slow path below names the problem
            if not raw.strip():
                continue
            try:
                rec = _parse_line(raw)
                this = detect_format(rec)
                if fmt is None:
                    fmt = this
                elif this != fmt:
                    raise FieldError(f"a {this}-format record in a {fmt}-format file (mixed formats)")
                if fmt == "reference":
                    pid = rec.get("prompt_id") if isinstance(rec, dict) else None
                    k = group_sizes.get(pid, 0) if isinstance(pid, str) else 0  # a bad id fails in from_reference
                    rec = from_reference(rec, traj_id=k)
                    group_sizes[rec["prompt_id"]] = k + 1
                else:
                    validate_record(rec)
            except FieldError as e:
                raise RecordError(path, line_no, str(e)) from None
            yield line_no, Trajectory.of(rec) if typed else rec


@contextmanager
def paused_gc():
    """Pause the cyclic garbage collector: records are acyclic, and with a million of them alive
    every collection walks them all (reading 1M records takes 2.4x longer with it running)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_records(path: str | os.PathLike, *, allow_empty: bool = False) -> list[dict]:
    """Read and validate a whole file; reject duplicate ``(prompt_id, traj_id)`` and empty files."""
    with paused_gc():
        return _read_records(path, allow_empty)


def _read_records(path, allow_empty: bool) -> list[dict]:
    records, line_nos = [], []
    for line_no, rec in iter_records(path):
        records.append(rec)
        line_nos.append(line_no)
    if not records and not allow_empty:
        raise RecordError(path, None, "no records (empty file)")
    check_unique(path, [(r["prompt_id"], r["traj_id"]) for r in records], line_nos)
    return records


def check_unique(path: str | os.PathLike, keys: Sequence[tuple[str, int]], line_nos: Sequence[int]) -> None:
    """Raise :class:`RecordError` at the second of two records with the same ``(prompt_id, traj_id)``."""
    if len(set(keys)) == len(keys):
        return
    seen: dict[tuple[str, int], int] = {}
    for key, line_no in zip(keys, line_nos):
        if key in seen:
            raise RecordError(
                path, line_no, f"field 'traj_id': duplicate (prompt_id, traj_id) = {key}, first on line {seen[key]}"
            )
        seen[key] = line_no


# -- writing ---------------------------------------------------------------------------------


def dumps(rec: dict) -> bytes:
    """One JSONL line (UTF-8, newline-terminated)."""
    return orjson.dumps(rec) + b"\n"


@contextmanager
def atomic_write(path: str | os.PathLike):
    """Open ``path`` for binary writing through a temporary file renamed into place on success.

    On any exception the temporary file is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_records(
    path: str | os.PathLike, records: Iterable[dict], *, to_format: str = "drift", format_penalty: float = 0.1
) -> int:
    """Write records atomically, in our layout or the reference code's; return how many."""
    if to_format not in FORMATS:
        raise DriftError(f"unknown format {to_format!r}; choose from {FORMATS}")
    n = 0
    with atomic_write(path) as f:
        for rec in records:
            f.write(dumps(to_reference(rec, format_penalty) if to_format == "reference" else rec))
            n += 1
    return n


def write_spliced(
    src: str | os.PathLike,
    out: str | os.PathLike,
    fields: dict[str, Sequence],
    keep: Sequence[bool],
    rewrite: Container[int] = (),
) -> int:
    """Copy the records of the validated schema-1 file ``src`` to ``out``, adding ``fields[name][i]``
    to the i-th record and skipping it where ``keep[i]`` is false; return how many were written.

    Nothing is re-serialised: the new fields are appended to each line's JSON object as text, so a
    record keeps its bytes (a million records in about a second). Records listed in ``rewrite``
    (those that already hold one of the fields) are parsed and rewritten instead, so no key is
    ever duplicated.
    """
    names = list(fields)
    values = zip(*(fields[name] for name in names))
    n = written = 0
    with atomic_write(out) as f, open(src, "rb") as lines:
        records = filter(bytes.strip, lines)  # the non-blank lines, as the reader counted them
        for n, (added, raw) in enumerate(zip(values, records), start=1):  # values first: a longer file keeps its extra line
            if not keep[n - 1]:
                continue
            added = dict(zip(names, added))
            if n - 1 in rewrite:
                f.write(dumps({**orjson.loads(raw), **added}))
            else:
                f.write(raw.rstrip()[:-1] + b"," + orjson.dumps(added)[1:] + b"\n")
            written += 1
        if n != len(keep) or next(records, None) is not None:
            raise DriftError(f"{src} changed while it was being read")
    return written
