"""``hf`` backend: transformers ``generate`` on CPU or one GPU.

- Conversations are rendered with the tokenizer's chat template, sorted by length, and generated
  in batches of ``batch_size`` with left padding and the KV cache.
- Sampling is per row: a logits processor draws each row's next token with that row's own
  ``torch.Generator`` (seeded from the rollout's per-trajectory seed) and hands ``generate`` a
  one-hot choice to take greedily. A trajectory's text therefore depends on its seed, not on
  which other trajectories shared its batch (up to floating-point differences from padding).
- ``n`` samples of one conversation are ``n`` rows; on CPU the prompt is short next to the
  replies, so sharing its prefill would save little.
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
                input_ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i, _ in batch])
                attention = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i, _ in batch])
                kwargs = dict(max_new_tokens=sampling.max_new_tokens, do_sample=False, pad_token_id=pad,
                              eos_token_id=self.eos_ids, temperature=None, top_p=None, top_k=None)
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

    def close(self) -> None:
        self.model = None
