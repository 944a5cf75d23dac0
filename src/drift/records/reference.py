"""The DRIFT reference code's record layout, both ways.

The reference code writes ``turn_rewards: {"t1": 0.0, ...}``, ``verifier: {"t1": 0|1, ...}``,
``t_star`` (first correct turn), ``answer_norms`` (only the parsable answers) and
``format_penalty`` (the negative penalty already applied). :func:`from_reference` turns such a
record into schema 1 (drift.records.schema); :func:`to_reference` writes one back. Readers detect
the layout per file (drift.records.jsonl).

Both ways are exact for what each layout holds, with one addition to the reference layout: where
the replies alone do not say which turns had a parsable answer (an answer that normalises to
nothing, or one found by lenient parsing outside a tag), :func:`to_reference` writes
``answer_turns`` (the 1-based turns whose answer is in ``answer_norms``), which the reference code
ignores and :func:`from_reference` reads. ``traj_id`` is not kept: a reader numbers each prompt's
trajectories in file order, which is what drift writes.
"""

from __future__ import annotations

from drift.answers import extract_answer
from drift.records.schema import (
    SCHEMA_VERSION,
    FieldError,
    check_messages,
    check_prompt_id,
    first_correct_turn,
    is_number,
)

FORMATS = ("drift", "reference")
_REFERENCE_KEYS = ("turn_rewards", "verifier", "t_star", "answer_norms", "format_penalty", "answer_turns")


def detect_format(rec) -> str:
    """``"reference"`` for the DRIFT reference layout, else ``"drift"``.

    >>> detect_format({"prompt_id": "a", "turn_rewards": {"t1": 1.0}})
    'reference'
    """
    return "reference" if isinstance(rec, dict) and "turn_rewards" in rec and "schema" not in rec else "drift"


def _check_reference(rec: dict) -> int:
    check_prompt_id(rec)
    turns = check_messages(rec.get("messages"))
    for name in ("turn_rewards", "verifier"):
        table = rec.get(name)
        if not isinstance(table, dict):
            raise FieldError(f"field '{name}' must be an object like {{\"t1\": ...}}")
        for t in range(1, turns + 1):
            if not is_number(table.get(f"t{t}")):
                raise FieldError(f"field '{name}.t{t}' must be a finite number")
    norms = rec.get("answer_norms")
    if not isinstance(norms, list) or not all(isinstance(a, str) for a in norms) or len(norms) > turns:
        raise FieldError(f"field 'answer_norms' must be a list of at most {turns} strings")
    t_star = rec.get("t_star")
    if t_star is not None and (not isinstance(t_star, int) or isinstance(t_star, bool) or not 1 <= t_star <= turns):
        raise FieldError(f"field 't_star' must be null or an integer in 1..{turns}")
    if not is_number(rec.get("format_penalty", 0.0)):
        raise FieldError("field 'format_penalty' must be a finite number")
    return turns


def from_reference(rec: dict, traj_id: int) -> dict:
    """Convert one reference-format record to schema 1 (``traj_id`` is its index in its group).

    ``answer_norms`` holds only the parsable answers; they are put back on the turns
    :func:`_parsed_turns` names.
    """
    turns = _check_reference(rec)
    norms = rec["answer_norms"]
    parsed = _parsed_turns(rec, len(norms), turns)
    it = iter(norms)
    answers = [next(it) if ok else None for ok in parsed]
    correct = [bool(rec["verifier"][f"t{t}"]) for t in range(1, turns + 1)]
    first = first_correct_turn(correct)
    if rec.get("t_star") != first:
        raise FieldError(f"field 't_star' is {rec.get('t_star')!r} but 'verifier' first passes at turn {first}")
    out = {"schema": SCHEMA_VERSION, "prompt_id": rec["prompt_id"], "traj_id": traj_id}
    extra = {k: v for k, v in rec.items() if k not in _REFERENCE_KEYS and k not in out}
    if extra.get("reward_details") == {}:
        del extra["reward_details"]  # the reference layout's empty default; to_reference writes it back
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


def to_reference(rec: dict, format_penalty: float) -> dict:
    """Write a schema-1 record in the reference layout (inverse of :func:`from_reference`).

    >>> rec = {"schema": 1, "prompt_id": "p0", "traj_id": 0, "gold": "4", "max_turns": 2,
    ...        "messages": [{"role": "user", "content": "2+2?"},
    ...                     {"role": "assistant", "content": "<answer>4</answer>"}],
    ...        "answers": ["4"], "correct": [True], "rewards": [1.0],
    ...        "format_errors": 0, "first_correct_turn": 1}
    >>> ref = to_reference(rec, format_penalty=0.1)
    >>> ref["verifier"], ref["turn_rewards"], ref["t_star"]
    ({'t1': 1, 't2': 0}, {'t1': 1.0, 't2': 0.0}, 1)
    """
    turns = len(rec["correct"])
    horizon = max(rec.get("max_turns") or turns, turns)
    out = {"prompt_id": rec["prompt_id"]}
    skip = {"schema", "traj_id", "answers", "correct", "rewards", "format_errors", "first_correct_turn", "max_turns"}
    out.update({k: v for k, v in rec.items() if k not in skip and k not in out})
    out["verifier"] = {f"t{t}": int(rec["correct"][t - 1]) if t <= turns else 0 for t in range(1, horizon + 1)}
    out["turn_rewards"] = {f"t{t}": float(rec["rewards"][t - 1]) if t <= turns else 0.0 for t in range(1, horizon + 1)}
    out.setdefault("reward_details", {})
    out["t_star"] = rec["first_correct_turn"]
    out["answer_norms"] = [a for a in rec["answers"] if a is not None]
    out["format_penalty"] = round(-format_penalty * rec["format_errors"], 10)
    parsed = [a is not None for a in rec["answers"]]
    if _parsed_turns(out, len(out["answer_norms"]), turns) != parsed:
        out["answer_turns"] = [t for t, ok in enumerate(parsed, 1) if ok]
    return out


def _parsed_turns(rec: dict, answers: int, turns: int) -> list[bool]:
    """Which of a reference record's turns had a parsable answer: ``answer_turns`` when written,
    else the replies with an ``<answer>`` tag; where those are not ``answers`` many, the first
    turns (the return only depends on how many answers there are and which are distinct, so the
    weights are the same either way)."""
    written = rec.get("answer_turns")
    if written is not None:
        if (
            not isinstance(written, list)
            or len(written) != answers
            or not all(isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= turns for t in written)
            or written != sorted(set(written))
        ):
            raise FieldError(f"field 'answer_turns' must list {answers} distinct turns in 1..{turns}, in order")
        return [t in written for t in range(1, turns + 1)]
    replies = [m["content"] for m in rec["messages"] if m["role"] == "assistant"]
    parsed = [extract_answer(r) is not None for r in replies]
    if sum(parsed) != answers:
        parsed = [t < answers for t in range(turns)]
    return parsed
