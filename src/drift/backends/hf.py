"""``hf`` backend: a transformers model on CPU or one GPU.

- Conversations are rendered with the tokenizer's chat template, sorted by length, and generated
  in batches of ``batch_size`` with left padding and the KV cache, by drift's decode loop
  (drift.backends.hf_decode): a row leaves the batch at the step its reply ends, and on a CPU
  single-token attention runs without torch's slow grouped-query kernel.
  ``model_generation_config=True`` runs transformers' ``generate`` instead (below).
- Sampling is per row: :class:`_RowSampler` draws each row's next token by inverse transform
  sampling, with one uniform number per row and step from that row's own CPU ``torch.Generator``
  (seeded from the rollout's per-trajectory seed). A trajectory's text therefore depends on its
  seed, not on which other trajectories shared its batch (up to floating-point differences from
  padding), nor on the device: the random numbers come from the CPU whatever device the
  probabilities are on.
- Replies are the sampled ids decoded as they are (special tokens kept, nothing stripped) up to
  the end token, which is left out (the chat template writes it back); the ids themselves, end
  token included, ride along in :class:`~drift.backends.base.Reply`. The model's own
  ``generation_config`` (repetition penalty, top-k, no-repeat n-grams, ...) is not applied, so
  samples come from the model's distribution at the stated temperature / top-p
  (``model_generation_config=True`` applies the logits processors of the model's own too, through
  transformers' ``generate``, whose rows all run until the batch's last one ends: repetition
  penalty, no-repeat n-grams, bad words; not its top-k, min-p or typical-p, which transformers
  applies only when it samples itself, and drift samples at the stated temperature / top-p).
- Generation stops at every end token the model declares: the tokenizer's EOS and each id of
  ``generation_config.eos_token_id`` (a list for Llama 3, Gemma, Phi-3: their end-of-turn tokens).
- ``n`` samples of one conversation are ``n`` rows, and so are the K trajectories of a prompt at
  turn 1 (same conversation, different seeds): rows of a batch with the same prompt share one
  prefill (``share_prefill``), its KV cache copied to each: 1.28x faster greedy, 1.13x sampled on
  turn 1 of 8 prompts x 8 trajectories with SmolLM2-135M on a CPU (benchmarks/rollout.py). In
  bf16 the replies may differ from unshared ones in the last bits (a batch's shape changes the
  matmul's rounding); runs stay reproducible, as batches are the same from run to run.
- Turn t + 1's prompt extends turn t's prompt + reply: each row's KV cache of prompt + reply ids is
  kept after a call, and the next call encodes only what follows the longest common token prefix
  with a kept entry (``reuse_cache``; at most ``reuse_cache_bytes`` kept; entries the next call
  does not extend are dropped, all of them when the weights change). Layout, positions and memory:
  drift.backends.hf_cache. Same fp32 logits as without reuse (to ~1e-6); bf16 as for shared
  prefills. 6.5 -> 0.8 prompt tokens read per generated token and 1.6-1.8x faster on 3 prompts x
  4 trajectories x 5 sampled turns of SmolLM2-135M in fp32 on a CPU (benchmarks/kv_reuse.py).
- ``tokens_prefilled`` counts the prompt tokens run through the model (after sharing and reuse,
  padding excluded); ``tokens_generated`` the reply ids, end token included.
- ``dtype`` (drift.models.resolve_dtype; ``auto`` by default): bfloat16 or float16 is the dtype of
  the backend's own model's weights (2-4x faster than float32 on CPUs with bf16 units, many times
  slower without; against float32 weights in autocast, which casts every weight at every step: half
  the weight memory, and 0.9-1.15x the speed in two runs of benchmarks/decode.py on a 2-core
  EPYC). A model handed over (drift rl's policy, float32 weights being trained) runs in autocast.
"""

from __future__ import annotations

import contextlib

from drift.backends.base import Reply, Sampling, resolve_seeds
from drift.backends.hf_decode import decode, use_packed_decode_attention
from drift.chat import render_prompt
from drift.config.groups import GENERATION_BATCH


class _RowSampler:
    """LogitsProcessor: temperature / top-p sampling with one generator per row.

    Row r's token is the first whose cumulative probability exceeds u_r * total, u_r ~ U[0, 1)
    drawn from row r's CPU generator: the same draw on every device (``torch.multinomial`` would
    need a generator on the probabilities' device, whose stream differs from the CPU's).
    """

    def __init__(self, generators, temperature: float, top_p: float):
        self.generators, self.temperature, self.top_p = generators, temperature, top_p

    @classmethod
    def for_rows(cls, rows, seeds, sampling: Sampling) -> _RowSampler:
        """Row ``(i, j)`` (sample j of conversation i) draws from a generator seeded by seed i and j."""
        import torch

        generators = []
        for i, j in rows:
            g = torch.Generator()
            seed = seeds[i] if seeds[i] is not None else torch.Generator().seed()  # not the global one
            g.manual_seed((seed * 1_000_003 + j) % 2**63)
            generators.append(g)
        return cls(generators, sampling.temperature, sampling.top_p)

    def choose(self, scores, rows):
        """The next token of batch rows ``rows`` (``scores``: their logits, in that order)."""
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.top_p  # keep the top token always
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        uniforms = torch.cat([torch.rand(1, generator=self.generators[r], dtype=torch.float64) for r in rows])
        cdf = probs.double().cumsum(-1)
        targets = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        return torch.searchsorted(cdf, targets, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)

    def __call__(self, input_ids, scores):
        """As a transformers ``LogitsProcessor``: every row's choice as a one-hot for greedy search."""
        import torch

        choice = self.choose(scores, range(len(scores)))
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(choice), device=scores.device), choice] = 0.0
        return out


def _left_pad(prompts: list[list[int]], width: int, pad: int):
    """``(input_ids, attention_mask)``, each (len(prompts), width): the prompts left-padded to ``width``."""
    import torch

    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def end_token_ids(tokenizer, generation_config) -> list[int]:
    """Every id that ends a reply: the tokenizer's EOS, the generation config's ``eos_token_id``
    (an int, or a list of them), and the special token the chat template writes after a reply
    (drift.chat.end_of_turn_ids), which some models' configs do not name.

    >>> from types import SimpleNamespace
    >>> end_token_ids(SimpleNamespace(eos_token_id=2, chat_template=None), SimpleNamespace(eos_token_id=[2, 107]))
    [2, 107]
    """
    from drift.chat import end_of_turn_ids

    declared = generation_config.eos_token_id
    ids = [tokenizer.eos_token_id] + (list(declared) if isinstance(declared, (list, tuple)) else [declared])
    if getattr(tokenizer, "chat_template", None):
        ids.append(end_of_turn_ids(tokenizer)[-1])
    return sorted({i for i in ids if isinstance(i, int)})


def decode_reply(tokenizer, ids: list[int], end_ids) -> tuple[str, str, list[int]]:
    """A reply from its sampled ``ids``: its text, up to the first end token (left out: the chat
    template writes it back; ``"stop"``), else all of them (``"length"``), special tokens kept; its
    finish reason; and the ids it spent, through that end token (what is counted and trained on).
    Also the reward of drift.trl_grpo, so that both read a sample alike.

    >>> from types import SimpleNamespace
    >>> tok = SimpleNamespace(decode=lambda ids, **how: "|".join(map(str, ids)))
    >>> decode_reply(tok, [5, 6, 2, 9], [2]), decode_reply(tok, [5, 6], [2])
    (('5|6', 'stop', [5, 6, 2]), ('5|6', 'length', [5, 6]))
    """
    end = next((k for k, tok in enumerate(ids) if tok in end_ids), None)
    if end is None:
        return _text(tokenizer, ids), "length", list(ids)
    return _text(tokenizer, ids[:end]), "stop", list(ids[: end + 1])


def _text(tokenizer, ids) -> str:
    """The text of sampled ids as sampled: special tokens kept, no clean-up of spaces (" ." stays)."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


class HFGenerator:
    """Generate with a local transformers model (folder, GGUF file or short name; see drift.models)."""

    @classmethod
    def from_config(cls, cfg) -> HFGenerator:
        return cls(
            cfg.model, batch_size=cfg.batch_size, dtype=cfg.dtype, model_generation_config=cfg.model_generation_config
        )

    @classmethod
    def for_policy(cls, model, tokenizer, cfg, *, device: str, dtype: str) -> HFGenerator:
        """Sample from ``model`` as it trains (drift rl): the trainer's own replica, on its device."""
        return cls(
            cfg.model,
            batch_size=cfg.batch_size,
            dtype=dtype,
            model_obj=model,
            tokenizer=tokenizer,
            device=device,
            model_generation_config=cfg.model_generation_config,
        )

    def __init__(
        self,
        model: str,
        batch_size: int = GENERATION_BATCH,
        device: str | None = None,
        dtype: str = "auto",
        cache_dir: str | None = None,
        model_obj=None,
        tokenizer=None,
        share_prefill: bool = True,
        model_generation_config: bool = False,
        reuse_cache: bool = True,
        reuse_cache_bytes: int = 2 * 2**30,
    ):
        from drift.backends.hf_cache import PrefixStore, cache_keyword, count_optimizer_steps, forward_keywords
        from drift.models import (
            default_device,
            keep_freed_memory,
            load_model,
            load_tokenizer,
            resolve_dtype,
            resolve_model,
        )

        path = resolve_model(model, cache_dir) if model_obj is None else model
        self.tokenizer = tokenizer or load_tokenizer(path)
        if device is None:  # a model handed over stays where it is (drift rl's is on the trainer's device)
            device = str(model_obj.device) if model_obj is not None else default_device()
        self.device = device
        if device.split(":")[0] == "cpu":
            keep_freed_memory()  # batches, caches kept and activations: freed and allocated again every call
        self.dtype = resolve_dtype(dtype, self.device)

        # The backend's own model holds its weights in the compute dtype; a policy being trained
        # (drift rl) keeps float32 weights and computes in autocast.
        self._autocast_on = model_obj is not None and self.dtype != "float32"
        # Loaded in the compute dtype, not cast to it: a cast would round RoPE's inv_freq buffer too.
        self.model = model_obj if model_obj is not None else load_model(path, self.dtype).to(self.device)
        if device.split(":")[0] == "cpu":
            use_packed_decode_attention(self.model)
        self.batch_size = batch_size
        self.share_prefill = share_prefill
        self.model_generation_config = model_generation_config
        self.reuse_cache = reuse_cache
        self._store = PrefixStore(reuse_cache_bytes)
        count_optimizer_steps()  # the store's fingerprint counts optimizer steps from here on
        self._cache_keyword = cache_keyword(self.model)
        self._last_logits_only = "logits_to_keep" in forward_keywords(self.model)
        self.tokens_generated = 0
        self.tokens_prefilled = 0
        self.eos_ids = end_token_ids(self.tokenizer, self.model.generation_config)

    def _autocast(self):
        import torch

        if not self._autocast_on:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=getattr(torch, self.dtype))

    def forget(self) -> None:
        """Drop the KV caches kept for the next call (drift rl: after sampling a round, before the
        weights they were computed with change, so that they hold no memory through training)."""
        self._store.forget()

    def generate(self, conversations, n, sampling: Sampling, seeds=None):
        request_seeds = resolve_seeds(conversations, n, sampling, seeds)
        prompts = [tuple(render_prompt(self.tokenizer, c)) for c in conversations]
        rows = [(i, j) for i in range(len(conversations)) for j in range(n)]
        rows.sort(key=lambda r: -len(prompts[r[0]]))  # similar lengths share a batch: less padding
        out = [[""] * n for _ in conversations]
        was_training = self.model.training
        self.model.eval()
        if self.reuse_cache:
            self._store.check(self.model)
        try:
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                sampler = _RowSampler.for_rows(batch, request_seeds, sampling) if sampling.temperature > 0 else None
                for (i, j), seq in zip(batch, self._batch(batch, prompts, sampling, sampler)):
                    text, finish, ids = decode_reply(self.tokenizer, seq, self.eos_ids)
                    self.tokens_generated += len(ids)
                    out[i][j] = Reply(text, finish, ids)
            if self.reuse_cache:
                self._store.commit()
        finally:
            self.model.train(was_training)
        return out

    def _batch(self, batch, prompts, sampling: Sampling, sampler) -> list[list[int]]:
        """Each row's sampled ids; each row's KV cache is kept as it ends (``reuse_cache``)."""
        input_ids, attention, cache, encoded = self._prefill(batch, prompts, self.tokenizer.pad_token_id)
        self.tokens_prefilled += encoded
        width = input_ids.shape[1]

        def keep(cache, at, rows, ids):
            if self.reuse_cache:
                kept = [(a, attention[b], prompts[batch[b][0]], r) for a, b, r in zip(at, rows, ids)]
                self._store.keep(cache, width, kept)

        if self.model_generation_config:
            return self._generate(input_ids, attention, cache, sampling, sampler, keep)
        return decode(
            self.model,
            self._cache_keyword,
            input_ids,
            attention,
            cache,
            max_new_tokens=sampling.max_new_tokens,
            end_ids=self.eos_ids,
            choose=sampler.choose if sampler else lambda logits, rows: logits.argmax(-1),
            autocast=self._autocast(),
            on_end=keep,
            device=self.device,
            last_logits_only=self._last_logits_only,
        )

    def _generate(self, input_ids, attention, cache, sampling: Sampling, sampler, keep) -> list[list[int]]:
        """transformers' ``generate`` with the model's own ``generation_config`` (its processors read
        each row's whole sequence, so rows run until the batch's last one ends): each row's ids."""
        import torch

        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_ids,
            return_dict_in_generate=True,
        )
        if cache is not None:
            kwargs[self._cache_keyword] = cache
        if sampler is not None:
            kwargs["logits_processor"] = [sampler]
        with torch.no_grad(), self._autocast():
            result = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **kwargs
            )
        sequences = result.sequences[:, input_ids.shape[1] :].tolist()
        replies = [decode_reply(self.tokenizer, seq, self.eos_ids)[2] for seq in sequences]
        keep(getattr(result, self._cache_keyword, None), range(len(replies)), range(len(replies)), replies)
        return sequences

    def _prefill(self, batch, prompts, pad: int):
        """``(input_ids, attention_mask, cache, encoded)`` for a batch of ``(prompt index, sample)``
        rows: the inputs of the decode loop, the KV cache of all their columns but the last (``None``
        when nothing is shared nor reused: the first step then encodes the prompts), and the prompt
        tokens run through the model, padding excluded (see drift.backends.hf_cache).

        Rows with the same prompt share one prefill (``share_prefill``: the K trajectories of a
        prompt at turn 1); each distinct prompt starts from the kept cache of the last call that
        shares the longest prefix with it (``reuse_cache``).
        """
        from drift.backends.hf_cache import prefill

        batch_prompts = [tuple(prompts[i]) for i, _ in batch]
        distinct: dict = {}  # prompt (or row, unshared) -> row of the prefill batch
        rows = [distinct.setdefault(p if self.share_prefill else b, len(distinct)) for b, p in enumerate(batch_prompts)]
        unique = list(dict(zip(rows, batch_prompts)).values())
        matches = [self._store.match(p) if self.reuse_cache else (0, None) for p in unique]
        full = sum(len(p) for p in batch_prompts)
        if len(unique) == len(batch) and not any(length for length, _ in matches):
            input_ids, attention = _left_pad([list(p) for p in batch_prompts], max(map(len, batch_prompts)), pad)
            return input_ids, attention, None, full
        input_ids, attention, cache, encoded = prefill(
            self.model,
            self._cache_keyword,
            unique,
            matches,
            rows,
            pad,
            self.device,
            self._autocast(),
            last_logits_only=self._last_logits_only,
        )
        return input_ids, attention, cache, (full if cache is None else encoded + len(batch))

    def close(self) -> None:
        self.model = None
        self._store.entries = self._store.pending = []
