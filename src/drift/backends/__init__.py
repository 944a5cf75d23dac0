"""Generator backends, chosen by name.

=============  =====================================================  ==================
name           what                                                   needs
=============  =====================================================  ==================
``hf``         a ``transformers`` model, drift's decode loop (CPU, GPU)  ``drift-llm[hf]``
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
from collections.abc import Callable
from typing import Any, TypeVar

from drift import DriftError
from drift.backends.base import Generator, Reply, Sampling, resolve_seeds

__all__ = [
    "BACKENDS",
    "POLICY_BACKENDS",
    "Generator",
    "Reply",
    "Sampling",
    "backend_from_config",
    "load_backend",
    "policy_backend_class",
    "resolve_seeds",
]

T = TypeVar("T")

BACKENDS: dict[str, str] = {
    "hf": "drift.backends.hf:HFGenerator",
    "vllm": "drift.backends.vllm:VLLMGenerator",
    "openai": "drift.backends.openai:OpenAIGenerator",
    "scripted": "drift.backends.scripted:ScriptedGenerator",
}
"""Backend name -> ``"module:Class"``: the only list of backends (``--backend`` reads its choices
here). The class takes its options as keywords and builds itself from a command's config with
``from_config(cfg)``; one that can sample from a policy being trained (``drift rl``) also has
``for_policy(model, tokenizer, cfg, device=, dtype=)`` and ``forget()`` (drop whatever it kept from
the weights it sampled with, before they change). Adding a backend: write the module, add a line."""

POLICY_BACKENDS: tuple[str, ...] = ("hf",)
"""The backends of :data:`BACKENDS` whose class has ``for_policy`` and ``forget``: drift rl's
``--backend`` choices, named here so that its flags are built without importing a backend
(a test checks the two agree)."""


def _build(name: str, make: Callable[[Any], T]) -> T:
    """Import backend ``name``'s class and call ``make(cls)``; a missing extra becomes an install hint."""
    if name not in BACKENDS:
        raise DriftError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    module_name, class_name = BACKENDS[name].split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        return make(cls)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "drift":
            raise  # our own bug, not a missing extra
        raise DriftError(
            f"backend {name!r} needs the package {e.name!r}, which is not installed; "
            f"install the extra: pip install 'drift-llm[{name}]'"
        ) from e


def load_backend(name: str, **kwargs) -> Generator:
    """Import backend ``name`` and construct it with ``kwargs``.

    >>> load_backend("nope")
    Traceback (most recent call last):
    ...
    drift.DriftError: unknown backend 'nope'; known: hf, openai, scripted, vllm
    """
    return _build(name, lambda cls: cls(**kwargs))


def backend_from_config(cfg) -> Generator:
    """The backend ``cfg.backend``, built from the options of a rollout / eval config."""
    return _build(cfg.backend, lambda cls: cls.from_config(cfg))


def policy_backend_class(name: str) -> Any:
    """The class of backend ``name`` if it can sample from a policy being trained (drift rl): it has
    ``for_policy(model, tokenizer, cfg, device=, dtype=)``."""
    if name in BACKENDS and name not in POLICY_BACKENDS:
        raise DriftError(
            f"backend {name!r} cannot sample from a policy while it trains (it has no for_policy); "
            f"drift rl supports: {', '.join(POLICY_BACKENDS)}"
        )
    return _build(name, lambda cls: cls)
