"""``hf`` backend: transformers ``generate`` on CPU or one GPU.

- Conversations are rendered with the tokenizer's chat template, sorted by length, and generated
  in batches of ``batch_size`` with left padding and the KV cache.
- Sampling is per row: a logits processor draws each row's next token with that row's own
  ``torch.Generator`` (seeded from the rollout's per-trajectory seed) and hands ``generate`` a
  one-hot choice to take greedily. A trajectory's text therefore depends on its seed, not on
  which other trajectories shared its batch (up to floating-point differences from padding).
- ``n`` samples of one conversation are ``n`` rows, and so are the K trajectories of a prompt at
  turn 1 (same conversation, different seeds): rows of a batch with the same prompt share one
  prefill (``share_prefill``), its KV cache copied to each: 1.28x faster greedy, 1.13x sampled on
  turn 1 of 8 prompts x 8 trajectories with SmolLM2-135M on a CPU (benchmarks/rollout.py). In
  bf16 the replies may differ from unshared ones in the last bits (a batch's shape changes the
  matmul's rounding); runs stay reproducible, as batches are the same from run to run.
- On CPU, ``autocast_bf16`` runs the matmuls in bfloat16 (2-4x faster on CPUs with bf16 units).
"""

from __future__ import annotations

import contextlib

from drift.backends.base import Sampling, resolve_seeds
from drift.examples import render_prompt


class _RowSampler:
    """LogitsProcessor: temperature / top-p sampling with one generator per row."""

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
        choice = torch.empty(probs.shape[0], dtype=torch.long)
        for row, gen in enumerate(self.generators):
            choice[row] = torch.multinomial(probs[row], 1, generator=gen)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(choice)), choice] = 0.0
        return out


def _left_pad(prompts: list[list[int]], width: int, pad: int):
    """``(input_ids, attention_mask)``, each (len(prompts), width): the prompts left-padded to ``width``."""
    import torch

    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


class HFGenerator:
    """Generate with a local transformers model (folder, GGUF file or short name; see drift.models)."""

    def __init__(
        self,
        model: str,
        batch_size: int = 32,
        device: str | None = None,
        autocast_bf16: bool = True,
        dtype: str = "float32",
        cache_dir: str | None = None,
        model_obj=None,
        tokenizer=None,
        share_prefill: bool = True,
    ):
        import torch

        from drift.models import load_model, load_tokenizer, resolve_model

        path = resolve_model(model, cache_dir) if model_obj is None else model
        self.tokenizer = tokenizer or load_tokenizer(path)
        self.model = model_obj if model_obj is not None else load_model(path, dtype)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model_obj is None:
            self.model.to(self.device)
        self.batch_size = batch_size
        self.autocast_bf16 = autocast_bf16
        self.share_prefill = share_prefill
        self.tokens_generated = 0
        self.eos_ids = sorted({i for i in [self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id]
                               if isinstance(i, int)})

    def _autocast(self):
        import torch

        if self.autocast_bf16:
            return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)
        return contextlib.nullcontext()

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
                kwargs = dict(max_new_tokens=sampling.max_new_tokens, do_sample=False, pad_token_id=pad,
                              eos_token_id=self.eos_ids, temperature=None, top_p=None, top_k=None)
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
                with torch.no_grad(), self._autocast():
                    generated = self.model.generate(
                        input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **kwargs
                    )
                for (i, j), seq in zip(batch, generated[:, width:].tolist()):
                    length = len(seq)
                    for k, tok in enumerate(seq):
                        if tok in self.eos_ids:
                            length = k + 1
                            break
                    self.tokens_generated += length
                    out[i][j] = self.tokenizer.decode(seq[:length], skip_special_tokens=True).strip()
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
            out = self.model(input_ids=ids[:, :-1].to(self.device), attention_mask=mask[:, :-1].to(self.device),
                             position_ids=positions[:, :-1].to(self.device), use_cache=True)
        name = "cache" if "cache" in type(out).__dataclass_fields__ else "past_key_values"  # transformers >= 5.2x
        cache = getattr(out, name)
        cache.reorder_cache(torch.tensor(rows, device=self.device))
        return {name: cache}

    def close(self) -> None:
        self.model = None
