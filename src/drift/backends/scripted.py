"""A deterministic fake policy for tests and demos: no model, microseconds per reply.

How it answers a conversation at turn ``t`` (``t`` = assistant messages so far + 1):

1. It looks the gold answer up with ``answer_fn(conversation)``. The default,
   :func:`solve_arithmetic`, computes the first ``+ - *`` integer expression in a user message
   ("What is 17*23?" -> ``"391"``) with a tiny parser, never ``eval``. Pass your own for other
   tasks, e.g. ``answer_fn=lambda conv: golds.get(conv[-1]["content"])``. When it returns
   ``None`` the policy cannot know the answer and is always wrong.
2. With probability ``p_correct[t-1]`` it gives the gold (the last entry of ``p_correct``
   serves all later turns). Otherwise it is wrong: with probability ``p_repeat`` it repeats its
   previous (wrong) answer, else it gives a fresh wrong integer, one it has not said before.
3. Independently, with probability ``p_format_error`` it drops the ``<answer>`` tag
   (``"I think it is 42."``: unparsable in strict mode, parsable in lenient mode).

Replies are a function of ``(seed, per-request seed, conversation)`` only, so the same inputs
give the same outputs whatever the batch composition or order. Two identical conversations in
one batch with the same per-request seed get the same replies; give them different ``seeds``
(the rollout does) to get independent draws. ``temperature`` and ``top_p`` are ignored;
``max_new_tokens`` truncates, counting whitespace-separated words as tokens (finish reason
``length``; otherwise ``stop``). ``tokens_prefilled`` stays 0: no model reads the prompts.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable

from drift import DriftError
from drift.answers import extract_answer, normalize_answer
from drift.arithmetic import evaluate_arithmetic
from drift.backends.base import Reply, Sampling, resolve_seeds

# Operands are capped at 30 digits: bounded work per match, and no real question needs more.
_EXPRESSION = re.compile(r"\d{1,30}(?:\s*[-+*×]\s*\d{1,30})+")
_TOKEN = re.compile(r"\d+|[-+*×]")
_INTEGER = re.compile(r"-?\d+")


def expression_value(expression: str) -> int:
    """Value of an expression of non-negative integers and ``+ - * ×`` (``*`` binds tighter), as
    the arithmetic task computes its gold answers (drift.arithmetic.evaluate_arithmetic).

    >>> expression_value("2 + 3*4 - 5")
    9
    """
    tokens = _TOKEN.findall(expression)
    return evaluate_arithmetic([int(t) for t in tokens[::2]], ["*" if op == "×" else op for op in tokens[1::2]])


def solve_arithmetic(conversation: list[dict]) -> str | None:
    """The default ``answer_fn``: the value of the first arithmetic expression a user wrote.

    >>> solve_arithmetic([{"role": "system", "content": "Answer in <answer></answer>."},
    ...                   {"role": "user", "content": "What is 17*23?"}])
    '391'
    >>> solve_arithmetic([{"role": "user", "content": "Name a prime."}]) is None
    True
    """
    for message in conversation:
        if message.get("role") == "user":
            match = _EXPRESSION.search(message.get("content") or "")
            if match:
                return str(expression_value(match.group(0)))
    return None


def _check_probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise DriftError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


class ScriptedGenerator:
    """Fake policy with known per-turn accuracy, repeat rate and format-error rate.

    >>> gen = ScriptedGenerator(p_correct=[0.0, 1.0], p_format_error=0.0)
    >>> question = [{"role": "user", "content": "What is 6*7?"}]
    >>> first = gen.generate([question], n=1, sampling=Sampling(), seeds=[0])[0][0]
    >>> first != "<answer>42</answer>"
    True
    >>> second_turn = question + [{"role": "assistant", "content": first},
    ...                           {"role": "user", "content": "Incorrect."}]
    >>> gen.generate([second_turn], n=2, sampling=Sampling(), seeds=[0])
    [['<answer>42</answer>', '<answer>42</answer>']]
    >>> gen.tokens_generated
    3
    """

    @classmethod
    def from_config(cls, cfg) -> ScriptedGenerator:
        return cls(seed=cfg.seed)

    def __init__(
        self,
        p_correct: float | list[float] = 0.5,
        p_repeat: float = 0.2,
        p_format_error: float = 0.1,
        seed: int = 0,
        answer_fn: Callable[[list[dict]], str | None] = solve_arithmetic,
    ):
        per_turn = [p_correct] if isinstance(p_correct, (int, float)) else list(p_correct)
        if not per_turn:
            raise DriftError("p_correct must be a probability or a non-empty list of them (one per turn)")
        self.p_correct = [_check_probability("p_correct", p) for p in per_turn]
        self.p_repeat = _check_probability("p_repeat", p_repeat)
        self.p_format_error = _check_probability("p_format_error", p_format_error)
        self.seed = seed
        self.answer_fn = answer_fn
        self.tokens_generated = 0
        self.tokens_prefilled = 0

    def generate(
        self,
        conversations: list[list[dict]],
        n: int,
        sampling: Sampling,
        seeds: list[int] | None = None,
    ) -> list[list[str]]:
        """``n`` replies per conversation; see the module docstring for how they are drawn."""
        request_seeds = resolve_seeds(conversations, n, sampling, seeds)
        return [
            [self._truncate(text, sampling.max_new_tokens) for text in self._replies(conversation, n, request_seed)]
            for conversation, request_seed in zip(conversations, request_seeds)
        ]

    def close(self) -> None:
        """Nothing to release."""

    def _replies(self, conversation: list[dict], n: int, request_seed: int | None) -> list[str]:
        # A private RNG per reply, seeded by a hash of everything the reply may depend on and
        # its index j: replies do not depend on batch order or composition, and the first
        # replies of n=4 are those of n=2.
        key = json.dumps([self.seed, request_seed, conversation], sort_keys=True, ensure_ascii=False, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()

        turn = 1 + sum(m.get("role") == "assistant" for m in conversation)
        p_correct = self.p_correct[min(turn, len(self.p_correct)) - 1]
        gold = self.answer_fn(conversation)
        said = [m.get("content") or "" for m in conversation if m.get("role") == "assistant"]
        previous = [a for a in (extract_answer(text, mode="lenient") for text in said) if a is not None]
        can_repeat = bool(previous) and (gold is None or normalize_answer(previous[-1]) != normalize_answer(gold))

        replies = []
        for j in range(n):
            rng = random.Random(f"{digest}:{j}")  # str seeds are hashed with SHA-512: stable across runs
            u_correct, u_repeat, u_format = rng.random(), rng.random(), rng.random()
            if gold is not None and u_correct < p_correct:
                answer = gold
            elif can_repeat and u_repeat < self.p_repeat:
                answer = previous[-1]
            else:
                answer = _fresh_wrong_answer(rng, gold, previous)
            broken_format = u_format < self.p_format_error
            replies.append(f"I think it is {answer}." if broken_format else f"<answer>{answer}</answer>")
        return replies

    def _truncate(self, text: str, max_new_tokens: int) -> Reply:
        words = text.split()
        cut = len(words) > max_new_tokens
        if cut:
            words = words[:max_new_tokens]
            text = " ".join(words)
        self.tokens_generated += len(words)
        return Reply(text, "length" if cut else "stop")


def _fresh_wrong_answer(rng: random.Random, gold: str | None, previous: list[str]) -> str:
    """An integer near the gold (near 0 when the gold is not an integer), never said before."""
    excluded = {normalize_answer(a) for a in previous}
    if gold is not None:
        excluded.add(normalize_answer(gold))
    center = int(gold) if gold is not None and _INTEGER.fullmatch(gold.strip()) else 0
    spread = 10
    while True:
        candidate = str(center + rng.choice((-1, 1)) * rng.randint(1, spread))
        if normalize_answer(candidate) not in excluded:
            return candidate
        spread *= 2
