"""Generate through any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp, TGI).

This is how rollouts scale past one machine: start servers anywhere, point ``base_url`` at one
(or at a load balancer in front of many) and raise ``concurrency``.

- One ``POST {base_url}/chat/completions`` per conversation, asking for all ``n`` replies at
  once, with ``temperature``, ``top_p``, ``max_tokens`` and ``seed``. Up to ``concurrency``
  requests are in flight (a thread pool over one pooled ``httpx.Client``).
- Connection errors, timeouts, HTTP 408, 429 and 5xx are retried ``max_retries`` times with
  exponential backoff and jitter (``Retry-After`` is honoured); other 4xx are not retried. When
  the retries run out, a :class:`~drift.DriftError` names the URL and the last error.
- A server that rejects ``n > 1`` or returns fewer than ``n`` choices (llama.cpp does) gets
  ``n`` single-reply requests instead, reply ``j`` seeded with ``seed + j``; the generator
  remembers and skips the ``n > 1`` attempt from then on.
- Replies are the server's text as sent (not stripped), with its ``finish_reason``.
- ``tokens_generated`` adds up the server's ``usage.completion_tokens`` (whitespace-separated
  words when a server reports no usage); ``tokens_prefilled`` its ``usage.prompt_tokens`` minus
  ``usage.prompt_tokens_details.cached_tokens`` (0 when a server reports no prompt tokens; vLLM
  reports cached tokens only with ``--enable-prompt-tokens-details``). Both count what the server
  spent, replies asked for again included (a server that ignored ``n``).
- Only those sampling fields are sent: a vLLM server fills the others (top-k, repetition penalty)
  from the model's generation config unless it runs with ``--generation-config vllm``.

``httpx`` is imported when the generator is built, so this module imports without it.
"""

from __future__ import annotations

import random
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from drift import DriftError
from drift.backends.base import Reply, Sampling, known_finish_reason, resolve_seeds

_SEED_MODULUS = 2**63  # servers parse the seed as a signed 64-bit integer


def is_retryable(status_code: int) -> bool:
    """HTTP statuses worth another try: request timeout, rate limit, server-side errors.

    >>> [is_retryable(code) for code in (200, 400, 404, 408, 429, 500, 503)]
    [False, False, False, True, True, True, True]
    """
    return status_code in (408, 429) or status_code >= 500


_TOO_LONG = ("context length", "max_model_len", "maximum context", "too long", "too large")


def _refusal_hint(status: int, body: str) -> str:
    """What to check when the server refuses a request with ``status``."""
    if status == 404:
        return " (is base_url right? it usually ends in /v1; and is --model a name the server serves?)"
    if status == 400 and any(words in body.lower() for words in _TOO_LONG):
        return (
            " (a conversation plus --max-new-tokens is longer than the server's context, vLLM's --max-model-len: "
            "lower --max-new-tokens or --max-turns, or serve a longer context)"
        )
    return ""


def reply_seed(seed: int | None, j: int) -> int | None:
    """Seed of reply ``j`` when the ``n`` replies of one request are asked for one by one.

    >>> reply_seed(7, 0), reply_seed(7, 2), reply_seed(None, 2)
    (7, 9, None)
    """
    return None if seed is None else (seed + j) % _SEED_MODULUS


class OpenAIGenerator:
    """Client for an OpenAI-compatible server.

    Args:
        base_url: the API root, usually ending in ``/v1`` (``http://10.0.0.5:8000/v1``).
        model: the served model name (``GET {base_url}/models`` lists them).
        api_key: sent as ``Authorization: Bearer ...``; local servers ignore it.
        concurrency: requests in flight at once.
        timeout: seconds to wait for a connection or for the next bytes of a response.
        max_retries: extra attempts per request after a retryable failure.
        backoff: seconds before the first retry; doubles on each further retry.
        max_backoff: cap on one wait, in seconds.
    """

    @classmethod
    def from_config(cls, cfg) -> OpenAIGenerator:
        api_key = "EMPTY"  # local servers ignore it
        if cfg.api_key_file:
            try:
                api_key = Path(cfg.api_key_file).read_text().strip()
            except OSError as e:
                raise DriftError(f"cannot read the api key file {cfg.api_key_file}: {e.strerror}") from None
            if not api_key:
                raise DriftError(f"the api key file {cfg.api_key_file} is empty")
        return cls(
            base_url=cfg.base_url,
            model=cfg.model,
            api_key=api_key,
            concurrency=cfg.concurrency,
            timeout=cfg.request_timeout,
            max_retries=cfg.max_retries,
        )

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "EMPTY",
        concurrency: int = 16,
        timeout: float = 600.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ):
        import httpx

        if concurrency < 1:
            raise DriftError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise DriftError(f"max_retries must be >= 0, got {max_retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.tokens_generated = 0
        self.tokens_prefilled = 0
        self.supports_n = True  # False once the server has turned down n > 1
        self.warned_no_content = False
        self._lock = threading.Lock()
        self._jitter = random.Random()
        self._client = httpx.Client(
            timeout=timeout,
            headers={"Authorization": f"Bearer {api_key}"},
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    def generate(
        self,
        conversations: list[list[dict]],
        n: int,
        sampling: Sampling,
        seeds: list[int] | None = None,
    ) -> list[list[Reply]]:
        """``n`` replies per conversation, in the order of ``conversations``."""
        request_seeds = resolve_seeds(conversations, n, sampling, seeds)
        if not conversations:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations)))
        try:
            futures = [pool.submit(self._complete, c, n, sampling, s) for c, s in zip(conversations, request_seeds)]
            return [future.result() for future in futures]
        finally:
            # On success every future is done; on an error, do not wait for the others.
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def __enter__(self) -> OpenAIGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _complete(self, conversation: list[dict], n: int, sampling: Sampling, seed: int | None) -> list[Reply]:
        if n > 1 and self.supports_n:
            replies = self._request(conversation, n, sampling, seed, may_reject=True)
            if replies is not None and len(replies) == n:
                return replies
        replies = [self._single(conversation, sampling, reply_seed(seed, j)) for j in range(n)]
        if n > 1:
            # n > 1 was rejected or silently ignored while n = 1 works: stop asking for n > 1.
            self.supports_n = False
        return replies

    def _single(self, conversation: list[dict], sampling: Sampling, seed: int | None) -> Reply:
        replies = self._request(conversation, 1, sampling, seed)
        assert replies is not None  # a refusal raises unless may_reject
        return replies[0]

    def _request(
        self, conversation: list[dict], n: int, sampling: Sampling, seed: int | None, may_reject: bool = False
    ) -> list[Reply] | None:
        """The replies of one request; ``None`` when ``may_reject`` and the server said 4xx."""
        payload = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in conversation],
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
        }
        if seed is not None:
            payload["seed"] = seed
        response = self._post(payload)
        if response.status_code >= 400:
            if may_reject:
                return None  # most likely n > 1; the single-reply retry reports any other cause
            status, body = response.status_code, response.text[:500]
            raise DriftError(f"{self.url} refused the request{_refusal_hint(status, body)}: HTTP {status}: {body}")
        try:
            data = response.json()
            choices = sorted(data["choices"], key=lambda choice: choice.get("index", 0))
            if not choices:
                raise ValueError("no choices")
            texts = [choice["message"]["content"] for choice in choices]
            replies = [
                Reply(text or "", known_finish_reason(choice.get("finish_reason")))
                for text, choice in zip(texts, choices, strict=True)
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            body = response.text[:500]
            raise DriftError(f"{self.url} sent something that is not a chat completion ({e!r}): {body}") from e
        if None in texts and not self.warned_no_content:
            self.warned_no_content = True
            warnings.warn(
                f"{self.url} sent a reply without content (a reasoning parser that cut the reply while "
                "thinking, or a tool call): it counts as an empty, unparsable turn",
                stacklevel=2,
            )
        usage = data.get("usage") or {}
        completion_tokens = usage.get("completion_tokens")
        if not isinstance(completion_tokens, int):
            completion_tokens = sum(len(reply.split()) for reply in replies)
        prompt_tokens = usage.get("prompt_tokens")
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        prefilled = prompt_tokens - (cached if isinstance(cached, int) else 0) if isinstance(prompt_tokens, int) else 0
        with self._lock:
            self.tokens_generated += completion_tokens
            self.tokens_prefilled += prefilled
        return replies

    def _post(self, payload: dict):
        """POST with retries; returns a response with a non-retryable status, or raises DriftError."""
        import httpx

        last_error, retry_after = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._delay(attempt, retry_after))
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TransportError as e:  # refused or reset connections, timeouts
                last_error, retry_after = f"{type(e).__name__}: {e}", None
                continue
            if not is_retryable(response.status_code):
                return response
            last_error = f"HTTP {response.status_code}: {response.text[:300]}"
            retry_after = response.headers.get("retry-after")
        attempts = self.max_retries + 1
        raise DriftError(f"{self.url}: no usable answer after {attempts} attempts; last error: {last_error}")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds before retry ``attempt`` (1-based): the server's Retry-After, else
        ``backoff * 2**(attempt-1)`` with jitter in [50%, 100%], both capped at ``max_backoff``."""
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff)
            except ValueError:
                pass  # an HTTP date: fall back to our own schedule
        delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        return delay * (0.5 + 0.5 * self._jitter.random())
