"""The trajectory record (schema 1): one JSON object per line, shared by every stage.

Turn ``t`` lives at index ``t-1`` of every per-turn list::

    schema              1
    prompt_id           str    groups trajectories of one prompt (the Z(x) of the weights)
    traj_id             int    0..K-1 within the prompt
    messages            list   [{"role": "system"|"user"|"assistant"|"tool", "content": str}]
    answers             list   answer per turn as the verifier compares them (a choice letter, a
                               number's value, else normalised text), null where none was parsed
    correct             list   bool per turn
    rewards             list   r_t per turn (1.0 on the correct turn)
    format_errors       int    turns with no parsable answer (= answers.count(null))
    first_correct_turn  int|null
    optional: finish_reasons (list: "stop" | "length" | null per turn: why the reply ended, null
    = unknown, as in records of the reference layout), token_ids (list per turn of the ids the
    policy sampled, end token included, or null where unknown: what drift train trains), task,
    question, gold, max_turns (int >= turns taken: the episode's turn budget), sampling, model, ...;
    added by `drift weight`: return, weight

Stages only add fields; unknown fields are carried through untouched.

Two validators that agree: :class:`Trajectory` checks a line's typed core in C (msgspec), the fast
path for big files; :func:`validate_record` checks a parsed dict field by field and names the
first problem (``field '...' ...``). The tests check that the fast path never accepts what the
slow one rejects. This module depends on nothing above it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from operator import attrgetter
from typing import Annotated, Literal, get_args

import msgspec

from drift import DriftError

SCHEMA_VERSION: Literal[1] = 1
Role = Literal["system", "user", "assistant", "tool"]
ROLES = frozenset(get_args(Role))
FinishReason = Literal["stop", "length"]
FINISH_REASONS: tuple[str, ...] = get_args(FinishReason)
"""Why a reply ended: at an end token, or at the length limit (``null`` in a record: unknown)."""


class RecordError(DriftError):
    """A bad record: says where (file and 1-based line) and which field."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class FieldError(ValueError):
    """Raised by the validators; :func:`iter_records` adds file and line."""


def first_correct_turn(correct: Sequence[bool]) -> int | None:
    """1-based turn of the first ``True``, or ``None``.

    >>> first_correct_turn([False, False, True]), first_correct_turn([False])
    (3, None)
    """
    return correct.index(True) + 1 if True in correct else None


# -- validation ------------------------------------------------------------------------------


def is_number(x) -> bool:
    """A finite float, or an int that converts to one (bool is not a number here)."""
    if type(x) is float:
        return math.isfinite(x)
    if type(x) is not int:
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # too large for a float
        return False


def check_messages(messages) -> int:
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


def check_prompt_id(rec: dict) -> None:
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
    finish_reasons: list[FinishReason | None] | msgspec.UnsetType = msgspec.UNSET
    token_ids: list[list[Annotated[int, msgspec.Meta(ge=0)]] | None] | msgspec.UnsetType = msgspec.UNSET
    return_: float | msgspec.UnsetType = msgspec.field(name="return", default=msgspec.UNSET)
    weight: Annotated[float, msgspec.Meta(ge=0)] | msgspec.UnsetType = msgspec.UNSET
    max_turns: int | msgspec.UnsetType | None = msgspec.UNSET

    @classmethod
    def of(cls, rec: dict) -> Trajectory:
        """The core of a record :func:`validate_record` accepted."""
        return cls(
            SCHEMA_VERSION,
            rec["prompt_id"],
            rec["traj_id"],
            [Message(m["role"], m["content"]) for m in rec["messages"]],
            rec["answers"],
            rec["correct"],
            [float(r) for r in rec["rewards"]],
            int(rec["format_errors"]),
            rec["first_correct_turn"] and int(rec["first_correct_turn"]),
            rec.get("finish_reasons", msgspec.UNSET),
            rec.get("token_ids", msgspec.UNSET),
            float(rec["return"]) if "return" in rec else msgspec.UNSET,
            float(rec["weight"]) if "weight" in rec else msgspec.UNSET,
            rec.get("max_turns", msgspec.UNSET),
        )


_decode_core = msgspec.json.Decoder(Trajectory).decode
_role = attrgetter("role")


def _consistent(t: Trajectory) -> bool:
    turns = list(map(_role, t.messages)).count("assistant")
    return (
        turns > 0
        and turns == len(t.correct) == len(t.rewards) == len(t.answers)
        and t.format_errors == t.answers.count(None)
        and t.first_correct_turn == first_correct_turn(t.correct)
        and (t.finish_reasons is msgspec.UNSET or len(t.finish_reasons) == turns)
        and (t.token_ids is msgspec.UNSET or len(t.token_ids) == turns)
        and (t.max_turns is msgspec.UNSET or t.max_turns is None or t.max_turns >= turns)
    )  # msgspec rejects numbers out of float range, so every float here is finite


def fast_core(raw: bytes) -> Trajectory | None:
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
    drift.records.schema.FieldError: field 'correct' must be a list of booleans
    """
    if not isinstance(rec, dict):
        raise FieldError("a record must be a JSON object")
    if rec.get("schema") != SCHEMA_VERSION:
        raise FieldError(f"field 'schema' must be {SCHEMA_VERSION}, got {rec.get('schema')!r}")
    check_prompt_id(rec)
    traj_id = rec.get("traj_id")
    if not isinstance(traj_id, int) or isinstance(traj_id, bool) or traj_id < 0:
        raise FieldError("field 'traj_id' must be a non-negative integer")
    turns = check_messages(rec.get("messages"))
    correct, rewards, answers = rec.get("correct"), rec.get("rewards"), rec.get("answers")
    if not isinstance(correct, list) or not all(isinstance(c, bool) for c in correct):
        raise FieldError("field 'correct' must be a list of booleans")
    if not isinstance(rewards, list) or not all(is_number(r) for r in rewards):
        raise FieldError("field 'rewards' must be a list of finite numbers")
    if not isinstance(answers, list) or not all(a is None or isinstance(a, str) for a in answers):
        raise FieldError("field 'answers' must be a list of strings or nulls")
    finish = rec.get("finish_reasons", [None] * turns)
    if not isinstance(finish, list) or not all(f is None or f in FINISH_REASONS for f in finish):
        raise FieldError('field \'finish_reasons\' must be a list of "stop", "length" or null')
    ids = rec.get("token_ids", [None] * turns)
    if not isinstance(ids, list) or not all(
        x is None or (isinstance(x, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x))
        for x in ids
    ):
        raise FieldError("field 'token_ids' must be a list of lists of non-negative integers or nulls")
    for name, values in (
        ("answers", answers),
        ("correct", correct),
        ("rewards", rewards),
        ("finish_reasons", finish),
        ("token_ids", ids),
    ):
        if len(values) != turns:
            raise FieldError(f"field '{name}' has {len(values)} entries for {turns} assistant turns")
    if rec.get("format_errors") != answers.count(None) or isinstance(rec.get("format_errors"), bool):
        raise FieldError(f"field 'format_errors' must equal the number of null answers ({answers.count(None)})")
    first = first_correct_turn(correct)
    if rec.get("first_correct_turn", "missing") != first:
        raise FieldError(f"field 'first_correct_turn' must be {first} (the first true entry of 'correct')")
    budget = rec.get("max_turns")
    if budget is not None and (type(budget) is not int or budget < turns):
        raise FieldError(f"field 'max_turns' must be an integer >= {turns} (the turns taken), or null")
    for name in ("return", "weight"):
        if name in rec and not is_number(rec[name]):
            raise FieldError(f"field '{name}' must be a finite number")
    if "weight" in rec and rec["weight"] < 0:
        raise FieldError("field 'weight' must be >= 0")
    return rec
