"""The generator plug point: what every backend (hf, vllm, openai, scripted) provides.

A conversation is a list of chat messages ``{"role": ..., "content": ...}``. A backend turns a
batch of conversations into ``n`` assistant replies each: :class:`Reply`, a ``str`` holding the text
exactly as generated (not stripped; without the end-of-turn marker, which the chat template puts
back) that also says why it ended (``finish_reason``: ``"stop"`` at an end token, ``"length"`` at
``max_new_tokens``) and, where the backend knows them, the ``token_ids`` it sampled (end token
included). The backend owns the tokenizer and the chat template.

Seeding. ``seeds`` holds one int per conversation; the rollout derives it deterministically from
``(seed, prompt_id, traj_id, turn)``, so a backend that can seed each request makes a rollout
reproducible and resumable whatever the batch composition. Without ``seeds``, every request is
seeded with ``sampling.seed`` (which may be ``None``: unseeded). :func:`resolve_seeds` applies
this rule so that all backends read it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from drift import DriftError
from drift.records.schema import FINISH_REASONS


def known_finish_reason(reason) -> str | None:
    """A backend's finish reason if the schema knows it (``stop``, ``length``), else ``None`` (unknown).

    >>> known_finish_reason("stop"), known_finish_reason("length"), known_finish_reason("tool_calls")
    ('stop', 'length', None)
    """
    return reason if reason in FINISH_REASONS else None


class Reply(str):
    """A reply's text, with why it ended and (where known) the ids sampled.

    >>> r = Reply("<answer>4</answer>", "stop", (27, 9, 2))
    >>> r == "<answer>4</answer>", r.finish_reason, r.token_ids
    (True, 'stop', (27, 9, 2))
    """

    finish_reason: str | None
    token_ids: tuple[int, ...] | None

    def __new__(cls, text: str, finish_reason: str | None = None, token_ids=None):
        reply = super().__new__(cls, text)
        reply.finish_reason = finish_reason
        reply.token_ids = tuple(token_ids) if token_ids is not None else None
        return reply


@dataclass(frozen=True)
class Sampling:
    """How to sample one batch of replies.

    >>> Sampling(temperature=0.7, seed=3)
    Sampling(temperature=0.7, top_p=1.0, max_new_tokens=256, seed=3)
    """

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy where the backend supports it."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 turns it off."""
    max_new_tokens: int = 256
    """Upper bound on each reply's length, in the backend's tokens."""
    seed: int | None = None
    """Seed used for every request when ``generate`` gets no per-conversation ``seeds``."""


@runtime_checkable
class Generator(Protocol):
    """A policy that writes assistant replies.

    ``tokens_generated`` counts the reply tokens produced since construction (for throughput
    reports; the scripted backend counts whitespace-separated words). ``tokens_prefilled`` counts
    the prompt tokens run through the model's forward pass to produce them, after any prefix
    sharing or cache reuse, padding excluded: hf counts what it encodes, vllm the prompt tokens
    minus each request's ``num_cached_tokens`` (prefix cache hits), openai ``usage.prompt_tokens``
    minus ``usage.prompt_tokens_details.cached_tokens``, the scripted backend 0 (no model).
    ``tokens_prefilled / tokens_generated`` is the prompt work per reply token. ``from_config(cfg)`` builds
    the backend from a command's config (drift.config.GenerationOptions, and EngineOptions for
    the commands that have them: a server's or vLLM's settings): which options it reads is its own
    business.
    """

    tokens_generated: int
    tokens_prefilled: int

    @classmethod
    def from_config(cls, cfg) -> Generator:
        """The backend configured by ``cfg`` (a rollout, eval or rl config)."""
        ...

    def generate(
        self,
        conversations: list[list[dict]],
        n: int,
        sampling: Sampling,
        seeds: list[int] | None = None,
    ) -> list[list[Reply]]:
        """Return ``n`` replies for each conversation: shape ``(len(conversations), n)``."""
        ...

    def close(self) -> None:
        """Release the model, connections, threads. Calling it twice is harmless."""
        ...


def resolve_seeds(
    conversations: list[list[dict]], n: int, sampling: Sampling, seeds: list[int] | None
) -> list[int | None]:
    """Check a ``generate`` request and return the seed of each conversation's request.

    >>> resolve_seeds([[], []], 1, Sampling(seed=5), None)
    [5, 5]
    >>> resolve_seeds([[], []], 1, Sampling(seed=5), [10, 11])
    [10, 11]
    >>> resolve_seeds([[]], 0, Sampling(), None)
    Traceback (most recent call last):
    ...
    drift.DriftError: n must be >= 1, got 0
    """
    if n < 1:
        raise DriftError(f"n must be >= 1, got {n}")
    if seeds is None:
        return [sampling.seed] * len(conversations)
    if len(seeds) != len(conversations):
        raise DriftError(f"got {len(seeds)} seeds for {len(conversations)} conversations; give one per conversation")
    return list(seeds)
