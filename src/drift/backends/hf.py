"""``hf`` backend: transformers ``generate`` on CPU or one GPU.

- Conversations are rendered with the tokenizer's chat template, sorted by length, and generated
  in batches of ``batch_size`` with left padding and the KV cache.
- Sampling is per row: a logits processor draws each row's next token by inverse transform
  sampling, with one uniform number per row and step from that row's own CPU ``torch.Generator``
  (seeded from the rollout's per-trajectory seed), and hands ``generate`` a one-hot choice to take
  greedily. A trajectory's text therefore depends on its seed, not on which other trajectories
  shared its batch (up to floating-point differences from padding), nor on the device: the random
  numbers come from the CPU whatever device the probabilities are on.
- Replies are the sampled ids decoded as they are (special tokens kept, nothing stripped) up to
  the end token, which is left out (the chat template writes it back); the ids themselves, end
  token included, ride along in :class:`~drift.backends.base.Reply`. The model's own
  ``generation_config`` (repetition penalty, top-k, no-repeat n-grams, ...) is not applied: a fresh
  config with only drift's settings is, so samples come from the model's distribution at the
  stated temperature / top-p (``model_generation_config=True`` applies the model's own too).
- Generation stops at every end token the model declares: the tokenizer's EOS and each id of
  ``generation_config.eos_token_id`` (a list for Llama 3, Gemma, Phi-3: their end-of-turn tokens).
- ``n`` samples of one conversation are ``n`` rows, and so are the K trajectories of a prompt at
  turn 1 (same conversation, different seeds): rows of a batch with the same prompt share one
  prefill (``share_prefill``), its KV cache copied to each: 1.28x faster greedy, 1.13x sampled on
  turn 1 of 8 prompts x 8 trajectories with SmolLM2-135M on a CPU (benchmarks/rollout.py). In
  bf16 the replies may differ from unshared ones in the last bits (a batch's shape changes the
  matmul's rounding); runs stay reproducible, as batches are the same from run to run.
- ``dtype`` (drift.models.resolve_dtype; ``auto`` by default): bfloat16 or float16 run the
  forward passes in autocast (2-4x faster on CPUs with bf16 units, many times slower without).
"""

from __future__ import annotations

import contextlib

from drift.backends.base import Reply, Sampling, resolve_seeds
from drift.chat import render_prompt


class _RowSampler:
    """LogitsProcessor: temperature / top-p sampling with one generator per row.

    Row r's token is the first whose cumulative probability exceeds u_r * total, u_r ~ U[0, 1)
    drawn from row r's CPU generator: the same draw on every device (``torch.multinomial`` would
    need a generator on the probabilities' device, whose stream differs from the CPU's).
    """

    def __init__(self, generators, temperature: float, top_p: float):
        self.generators, self.temperature, self.top_p = generators, temperature, top_p

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.top_p  # keep the top token always
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        uniforms = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        cdf = probs.double().cumsum(-1)
        targets = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        choice = torch.searchsorted(cdf, targets, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(choice), device=scores.device), choice] = 0.0
        return out


def _left_pad(prompts: list[list[int]], width: int, pad: int):
    """``(input_ids, attention_mask)``, each (len(prompts), width): the prompts left-padded to ``width``."""
    import torch

    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@contextlib.contextmanager
def _bare_generation_config(model):
    """Generate with a blank ``generation_config``: ``generate`` fills every field a call leaves
    unset from the model's own config, processors included (repetition penalty, no-repeat n-grams,
    ...), which would sample from another distribution than the stated one."""
    from transformers import GenerationConfig

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model's base
    saved, base.generation_config = base.generation_config, GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


def end_token_ids(tokenizer, generation_config) -> list[int]:
    """Every id that ends a reply: the tokenizer's EOS and the generation config's ``eos_token_id``
    (an int, or a list of them).

    >>> from types import SimpleNamespace
    >>> end_token_ids(SimpleNamespace(eos_token_id=2), SimpleNamespace(eos_token_id=[2, 107]))
    [2, 107]
    """
    declared = generation_config.eos_token_id
    ids = [tokenizer.eos_token_id] + (list(declared) if isinstance(declared, (list, tuple)) else [declared])
    return sorted({i for i in ids if isinstance(i, int)})


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
        batch_size: int = 32,
        device: str | None = None,
        dtype: str = "auto",
        cache_dir: str | None = None,
        model_obj=None,
        tokenizer=None,
        share_prefill: bool = True,
        model_generation_config: bool = False,
    ):
        from drift.models import default_device, load_model, load_tokenizer, resolve_dtype, resolve_model

        path = resolve_model(model, cache_dir) if model_obj is None else model
        self.tokenizer = tokenizer or load_tokenizer(path)
        if device is None:  # a model handed over stays where it is (drift rl's is on the trainer's device)
            device = str(model_obj.device) if model_obj is not None else default_device()
        self.device = device
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model_obj if model_obj is not None else load_model(path).to(self.device)
        self.batch_size = batch_size
        self.share_prefill = share_prefill
        self.model_generation_config = model_generation_config
        self.tokens_generated = 0
        self.eos_ids = end_token_ids(self.tokenizer, self.model.generation_config)

    def _autocast(self):
        import torch

        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=getattr(torch, self.dtype))

    def generate(self, conversations, n, sampling: Sampling, seeds=None):
        import torch

        request_seeds = resolve_seeds(conversations, n, sampling, seeds)
        prompts = [render_prompt(self.tokenizer, c) for c in conversations]
        rows = [(i, j) for i in range(len(conversations)) for j in range(n)]
        rows.sort(key=lambda r: -len(prompts[r[0]]))  # similar lengths share a batch: less padding
        out = [[""] * n for _ in conversations]
        pad = self.tokenizer.pad_token_id
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                width = max(len(prompts[i]) for i, _ in batch)
                input_ids, attention = _left_pad([prompts[i] for i, _ in batch], width, pad)
                kwargs = dict(
                    max_new_tokens=sampling.max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=self.eos_ids
                )
                if self.share_prefill:
                    kwargs.update(self._shared_prefill(batch, prompts, width, pad))
                if sampling.temperature > 0:
                    gens = []
                    for i, j in batch:
                        g = torch.Generator()
                        seed = request_seeds[i]
                        g.manual_seed(((seed if seed is not None else torch.seed()) * 1_000_003 + j) % 2**63)
                        gens.append(g)
                    kwargs["logits_processor"] = [_RowSampler(gens, sampling.temperature, sampling.top_p)]
                bare = contextlib.nullcontext() if self.model_generation_config else _bare_generation_config(self.model)
                with torch.no_grad(), self._autocast(), bare:
                    generated = self.model.generate(
                        input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **kwargs
                    )
                for (i, j), seq in zip(batch, generated[:, width:].tolist()):
                    end = next((k for k, tok in enumerate(seq) if tok in self.eos_ids), None)
                    ids = seq if end is None else seq[: end + 1]
                    self.tokens_generated += len(ids)
                    text = self.tokenizer.decode(ids if end is None else ids[:-1], skip_special_tokens=False)
                    out[i][j] = Reply(text, "length" if end is None else "stop", ids)
        finally:
            self.model.train(was_training)
        return out

    def _shared_prefill(self, batch, prompts, width: int, pad: int) -> dict:
        """``generate`` arguments with the KV cache of the batch's prompts but their last token,
        computed once per distinct prompt and copied to the rows that share it (``{}`` when every
        row's prompt differs).

        The K trajectories of a prompt all start from the same conversation, so at turn 1 a batch
        holds a few distinct prompts many times over. Positions follow the left padding exactly as
        ``generate`` numbers them, so the rows continue as if each had been prefilled alone.
        """
        import torch

        distinct: dict[tuple, int] = {}  # prompt tokens -> row of the prefill batch
        rows = [distinct.setdefault(tuple(prompts[i]), len(distinct)) for i, _ in batch]
        if len(distinct) == len(batch) or width < 2:
            return {}
        ids, mask = _left_pad([list(p) for p in distinct], width, pad)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad(), self._autocast():
            out = self.model(
                input_ids=ids[:, :-1].to(self.device),
                attention_mask=mask[:, :-1].to(self.device),
                position_ids=positions[:, :-1].to(self.device),
                use_cache=True,
            )
        name = "cache" if "cache" in type(out).__dataclass_fields__ else "past_key_values"  # transformers >= 5.2x
        cache = getattr(out, name)
        cache.reorder_cache(torch.tensor(rows, device=self.device))
        return {name: cache}

    def close(self) -> None:
        self.model = None
