"""The unary-feedback correction environment: answer, hear "Incorrect", try again.

One :class:`CorrectionEnv` runs one episode at a time (build one per episode, or ``reset`` it):

1. ``reset(problem)`` returns the opening messages (system + instruction).
2. ``step(reply)`` takes the assistant's reply for turn ``t`` (1-based). Its answer is
   extracted (:func:`~drift.answers.extract_answer`, ``strict`` = ``<answer>`` tags only) and
   checked by the verifier against the gold answer:

   - correct: reward 1.0, the episode ends;
   - wrong, or no parsable answer (a *format error*, which still uses up the turn): reward 0.0,
     and unless ``t == max_turns`` the protocol's feedback is appended as a user message.

3. ``record(traj_id)`` returns the finished trajectory as a schema-1 record
   (:func:`drift.records.validate_record`). Its messages end with the last assistant reply.

The same object serves rollouts and evaluation, so their prompts cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from drift import DriftError
from drift.answers import MODES, extract_answer, normalize_answer
from drift.config.groups import MAX_TURNS, VERIFIER_TIMEOUT
from drift.prompts import (
    DEFAULT_SYSTEM_PROMPT,
    FEEDBACK,
    FORMAT_FEEDBACK,
    build_messages,
    get_protocol,
)
from drift.records.schema import SCHEMA_VERSION, first_correct_turn
from drift.verifiers import get_verifier


@dataclass(frozen=True)
class Problem:
    """One problem: ``prompt_id`` groups its trajectories; ``meta`` holds anything else (plain data)."""

    prompt_id: str
    question: str
    gold: str
    task: str
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class StepResult:
    """What one assistant turn earned. ``answer`` is normalised (``None``: no parsable answer);
    ``feedback`` is the user message appended after it (``None`` once ``done``)."""

    reward: float
    done: bool
    correct: bool
    answer: str | None
    feedback: str | None


@runtime_checkable
class Environment(Protocol):
    """What the rollout loop needs from an environment."""

    messages: list[dict]

    def reset(self, problem: Problem) -> list[dict]: ...

    def step(self, text: str, finish_reason: str | None = None, token_ids=None) -> StepResult: ...

    def record(self, traj_id: int, **extra) -> dict: ...


class CorrectionEnv:
    """Multi-turn answer correction with unary feedback.

    >>> env = CorrectionEnv(lambda prediction, gold: prediction == gold, max_turns=2)
    >>> len(env.reset(Problem("arith-000000", "What is 40+85?", "125", "arithmetic")))
    2
    >>> env.step("<answer>135</answer>")
    StepResult(reward=0.0, done=False, correct=False, answer='135', feedback='Incorrect. Please think again.')
    >>> env.step("<answer> 125 </answer>").reward
    1.0
    >>> rec = env.record(traj_id=0)
    >>> rec["answers"], rec["correct"], rec["first_correct_turn"], len(rec["messages"])
    (['135', '125'], [False, True], 2, 5)
    """

    def __init__(
        self,
        verifier: Callable[[str, str], bool],
        max_turns: int = MAX_TURNS,
        protocol: str = "simple",
        answer_mode: str = "strict",
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        feedback: str = FEEDBACK,
        format_feedback: str = FORMAT_FEEDBACK,
        instruction: str = "math",
    ):
        if not isinstance(max_turns, int) or max_turns < 1:
            raise DriftError(f"max_turns must be an integer >= 1, got {max_turns!r}")
        if answer_mode not in MODES:
            raise DriftError(f"unknown answer mode {answer_mode!r}; known: {', '.join(MODES)}")
        self.verifier = verifier
        self.answer_key: Callable[[str], str] = getattr(verifier, "key", normalize_answer)  # a plain function: text
        self.max_turns, self.answer_mode, self.instruction = max_turns, answer_mode, instruction
        self.render_feedback = get_protocol(protocol)
        self.system_prompt, self.feedback, self.format_feedback = system_prompt, feedback, format_feedback
        self.problem: Problem | None = None
        self.messages: list[dict] = []
        self.answers: list[str | None] = []
        self.finish_reasons: list[str | None] = []
        self.token_ids: list[list[int] | None] = []
        self.correct: list[bool] = []
        self.rewards: list[float] = []

    @property
    def turn(self) -> int:
        """Assistant turns taken so far."""
        return len(self.rewards)

    @property
    def done(self) -> bool:
        return bool(self.correct and self.correct[-1]) or self.turn >= self.max_turns

    @property
    def format_errors(self) -> int:
        return self.answers.count(None)

    @property
    def first_correct_turn(self) -> int | None:
        return first_correct_turn(self.correct)

    def reset(self, problem: Problem) -> list[dict]:
        """Start an episode on ``problem``; return (a copy of) the opening messages."""
        self.problem = problem
        self.messages = build_messages(problem.question, self.instruction, self.system_prompt)
        self.answers, self.correct, self.rewards, self.finish_reasons, self.token_ids = [], [], [], [], []
        return [dict(m) for m in self.messages]

    def step(self, text: str, finish_reason: str | None = None, token_ids=None) -> StepResult:
        """Score the assistant reply ``text`` for the next turn; append feedback unless done.

        ``finish_reason`` (``stop``, ``length``; ``None``: unknown) and ``token_ids`` (the ids
        sampled, end token included; ``None``: unknown) are recorded per turn: training trains
        those ids, or the text with an end-of-turn marker only after ``stop``."""
        if self.problem is None:
            raise RuntimeError("step() before reset()")
        if self.done:
            raise RuntimeError(f"the episode is over (turn {self.turn} of {self.max_turns}); call reset()")
        # A server's JSON may carry lone surrogates ("\ud800"), which no UTF-8 writer accepts: the
        # record must stay writable, so they become U+FFFD.
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        self.messages.append({"role": "assistant", "content": text})
        extracted = extract_answer(text, self.answer_mode)
        # The record keeps the answer in the form the verifier counts as the same (Verifier.key: the
        # choice letter, a number's value, else normalised text; the repetition penalty compares
        # these); the verifier sees it as written. An answer that normalises to nothing
        # ("<answer>.</answer>") is a format error.
        answer = self.answer_key(extracted) if extracted is not None else None
        answer = answer or None
        correct = answer is not None and extracted is not None and bool(self.verifier(extracted, self.problem.gold))
        reward = 1.0 if correct else 0.0
        self.answers.append(answer)
        self.finish_reasons.append(finish_reason)
        self.token_ids.append(list(token_ids) if token_ids is not None else None)
        self.correct.append(correct)
        self.rewards.append(reward)
        feedback = None
        if not self.done:
            message = self.feedback if answer is not None else self.format_feedback
            feedback = self.render_feedback(message, reward=reward, turn=self.turn, max_turns=self.max_turns)
            self.messages.append({"role": "user", "content": feedback})
        return StepResult(reward, self.done, correct, answer, feedback)

    def record(self, traj_id: int, **extra) -> dict:
        """The episode so far as a schema-1 record; ``extra`` fields (``sampling``, ``model``...) are added."""
        if self.problem is None or not self.turn:
            raise RuntimeError("record() needs at least one step()")
        ex = self.problem
        rec = {
            "schema": SCHEMA_VERSION,
            "prompt_id": ex.prompt_id,
            "traj_id": traj_id,
            "task": ex.task,
            "question": ex.question,
            "gold": ex.gold,
            "max_turns": self.max_turns,
            "messages": [dict(m) for m in self.messages],
            "answers": list(self.answers),
            "correct": list(self.correct),
            "rewards": list(self.rewards),
            "format_errors": self.format_errors,
            "first_correct_turn": self.first_correct_turn,
            "finish_reasons": list(self.finish_reasons),
        }
        if any(ids is not None for ids in self.token_ids):
            rec["token_ids"] = [list(ids) if ids is not None else None for ids in self.token_ids]
        clash = sorted(set(rec) & set(extra))
        if clash:
            raise ValueError(f"record(): extra fields {clash} would overwrite the episode's own")
        rec.update(extra)
        return rec


def make_env(
    task_spec,
    *,
    max_turns: int = MAX_TURNS,
    protocol: str = "simple",
    answer_mode: str = "strict",
    timeout: float = VERIFIER_TIMEOUT,
    verifier: Callable[[str, str], bool] | None = None,
    **kwargs,
) -> CorrectionEnv:
    """A :class:`CorrectionEnv` for a task (anything with ``.verifier`` and ``.instruction`` names,
    such as :class:`drift.tasks.TaskSpec`). Pass ``verifier`` to share one (and its stats) across
    episodes; otherwise a fresh one is built from the task's verifier name and ``timeout``.

    >>> from types import SimpleNamespace
    >>> env = make_env(SimpleNamespace(verifier="choice", instruction="choice"), max_turns=1)
    >>> env.reset(Problem("q1", "Pick one.\\n(A) 1\\n(B) 2", "B", "mcq"))[1]["content"].startswith("You are answering")
    True
    >>> env.step("<answer>(b)</answer>").correct
    True
    """
    verifier = verifier if verifier is not None else get_verifier(task_spec.verifier, timeout)
    return CorrectionEnv(
        verifier,
        max_turns=max_turns,
        protocol=protocol,
        answer_mode=answer_mode,
        instruction=task_spec.instruction,
        **kwargs,
    )
