"""Every prompt and feedback text the model sees. Nothing else in drift spells any of them out.

The defaults are the DRIFT reference data's, word for word (its system prompt carries a
trailing space, ``"You're a helpful assistant. "``; ours does not, which chat templates render
the same up to that space). An episode is::

    system     DEFAULT_SYSTEM_PROMPT
    user       INSTRUCTIONS[kind].format(question=...)
    assistant  <answer> ... </answer>
    user       feedback, rendered by a protocol    (only after a wrong turn that is not the last)
    assistant  ...

Protocols (chosen by name from :data:`PROTOCOLS`), after wrong turn ``t`` of ``T``:

- ``simple``: the feedback text alone (unary feedback, as in the paper).
- ``full``: the feedback text, a blank line, then ``Reward: 0``, ``Turn: t/T`` and
  ``Attempts left: T-t`` on their own lines.
"""

from __future__ import annotations

from collections.abc import Callable

from drift import DriftError

DEFAULT_SYSTEM_PROMPT = "You're a helpful assistant."

MATH_INSTRUCTION = (
    "You are solving Math problems. Only give the final answer between <answer> and </answer>.\n\n"
    "Problem:\n{question}\n\n"
    "Always output: <answer> [your answer] </answer> with no extra text. Strictly follow this format."
)

CHOICE_INSTRUCTION = (
    "You are answering multiple-choice questions. Only give the letter of the correct choice "
    "between <answer> and </answer>.\n\n"
    "Question:\n{question}\n\n"
    "Always output: <answer> [letter] </answer> with no extra text. Strictly follow this format."
)

INSTRUCTIONS: dict[str, str] = {"math": MATH_INSTRUCTION, "choice": CHOICE_INSTRUCTION}
"""Instruction templates by kind (a task's ``instruction``); each has one ``{question}`` slot."""

ANSWER_FORMAT = "<answer>{answer}</answer>"
"""A reply in exactly the requested format (used to build format warm-up data)."""

FEEDBACK = "Incorrect. Please think again."
"""Said after a wrong answer."""

FORMAT_FEEDBACK = "Incorrect. Please think again."
"""Said after a reply with no parsable answer (the same words by default, as in the paper)."""


def build_instruction(question: str, kind: str = "math") -> str:
    """The first user message for ``question``.

    >>> print(build_instruction("What is 40+85?"))
    You are solving Math problems. Only give the final answer between <answer> and </answer>.
    <BLANKLINE>
    Problem:
    What is 40+85?
    <BLANKLINE>
    Always output: <answer> [your answer] </answer> with no extra text. Strictly follow this format.
    """
    if kind not in INSTRUCTIONS:
        raise DriftError(f"unknown instruction kind {kind!r}; known: {', '.join(sorted(INSTRUCTIONS))}")
    # str.replace, not str.format: a question may hold braces ("\\frac{1}{2}", "{x}").
    return INSTRUCTIONS[kind].replace("{question}", question)


def build_messages(question: str, kind: str = "math", system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    """``[system, user]`` messages opening an episode (no system message when it is ``None``).

    >>> [m["role"] for m in build_messages("2+2?")], len(build_messages("2+2?", system_prompt=None))
    (['system', 'user'], 1)
    """
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    messages.append({"role": "user", "content": build_instruction(question, kind)})
    return messages


# -- feedback protocols ----------------------------------------------------------------------


def simple_feedback(message: str, *, reward: float, turn: int, max_turns: int) -> str:
    """The feedback text alone.

    >>> simple_feedback(FEEDBACK, reward=0.0, turn=1, max_turns=5)
    'Incorrect. Please think again.'
    """
    return message


def full_feedback(message: str, *, reward: float, turn: int, max_turns: int) -> str:
    """The feedback text plus the reward of turn ``turn`` (1-based), the turn and the attempts left.

    >>> print(full_feedback(FEEDBACK, reward=0.0, turn=2, max_turns=5))
    Incorrect. Please think again.
    <BLANKLINE>
    Reward: 0
    Turn: 2/5
    Attempts left: 3
    """
    return f"{message}\n\nReward: {reward:g}\nTurn: {turn}/{max_turns}\nAttempts left: {max_turns - turn}"


PROTOCOLS: dict[str, Callable[..., str]] = {"simple": simple_feedback, "full": full_feedback}


def get_protocol(name: str) -> Callable[..., str]:
    """The feedback renderer called ``name``.

    >>> get_protocol("verbose")
    Traceback (most recent call last):
    ...
    drift.DriftError: unknown feedback protocol 'verbose'; known: full, simple
    """
    if name not in PROTOCOLS:
        raise DriftError(f"unknown feedback protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]
