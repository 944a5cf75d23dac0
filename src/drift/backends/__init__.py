"""Generator backends, chosen by name.

=============  =====================================================  ==================
name           what                                                   needs
=============  =====================================================  ==================
``hf``         ``transformers`` generate (CPU or one GPU)              ``drift-llm[hf]``
``vllm``       vLLM offline engine (tensor parallel)                  ``drift-llm[vllm]``
``openai``     any OpenAI-compatible server (vLLM, SGLang, llama.cpp)  ``drift-llm[openai]``
``scripted``   deterministic fake policy for tests and demos          nothing
=============  =====================================================  ==================

Modules are imported only when their backend is loaded, so heavy dependencies stay optional.

>>> gen = load_backend("scripted", p_correct=1.0, p_format_error=0.0)
>>> gen.generate([[{"role": "user", "content": "What is 2+3*4?"}]], n=1, sampling=Sampling())
[['<answer>14</answer>']]
"""

from __future__ import annotations

import importlib

from drift import DriftError
from drift.backends.base import Generator, Reply, Sampling, resolve_seeds

__all__ = ["BACKENDS", "Generator", "Reply", "Sampling", "load_backend", "resolve_seeds"]

BACKENDS: dict[str, str] = {
    "hf": "drift.backends.hf:HFGenerator",
    "vllm": "drift.backends.vllm:VLLMGenerator",
    "openai": "drift.backends.openai:OpenAIGenerator",
    "scripted": "drift.backends.scripted:ScriptedGenerator",
}
"""Backend name -> ``"module:Class"``; the class takes the backend's options as keywords."""


def load_backend(name: str, **kwargs) -> Generator:
    """Import backend ``name`` and construct it with ``kwargs``.

    >>> load_backend("nope")
    Traceback (most recent call last):
    ...
    drift.DriftError: unknown backend 'nope'; known: hf, openai, scripted, vllm
    """
    if name not in BACKENDS:
        raise DriftError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    module_name, class_name = BACKENDS[name].split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        return cls(**kwargs)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "drift":
            raise  # our own bug, not a missing extra
        raise DriftError(
            f"backend {name!r} needs the package {e.name!r}, which is not installed; "
            f"install the extra: pip install 'drift-llm[{name}]'"
        ) from e
