"""The backend table: names resolve lazily, mistakes become DriftErrors a user can act on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from drift import DriftError, backends
from drift.backends import BACKENDS, load_backend


def test_every_backend_is_a_module_and_class_path():
    assert set(BACKENDS) == {"hf", "vllm", "openai", "scripted"}
    assert all(path.startswith("drift.backends.") and ":" in path for path in BACKENDS.values())


def test_backend_modules_import_no_heavy_dependency():
    # A fresh interpreter: this test process may have imported anything already.
    code = (
        "import sys, drift.backends, drift.backends.scripted, drift.backends.openai; "
        "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DriftError, match="unknown backend 'nope'; known: hf, openai, scripted, vllm"):
        load_backend("nope")


def test_a_missing_extra_becomes_an_install_hint(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "ghost", "ghost_extra_package:Ghost")
    with pytest.raises(DriftError, match=r"needs the package 'ghost_extra_package'.*drift-llm\[ghost\]"):
        load_backend("ghost")


def test_a_missing_drift_module_is_a_bug_not_a_hint(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "broken", "drift.backends.no_such_module:Nothing")
    with pytest.raises(ModuleNotFoundError):
        load_backend("broken")


def test_every_backend_builds_itself_from_a_config():
    """The table is the only list: each class has from_config, and backend_from_config uses it."""
    from drift.backends import backend_from_config
    from drift.backends.scripted import ScriptedGenerator
    from drift.config import RolloutConfig

    for name, path in BACKENDS.items():
        module, cls = path.split(":")
        assert callable(__import__(module, fromlist=[cls]).__dict__[cls].from_config), name
    gen = backend_from_config(RolloutConfig(backend="scripted", seed=7))
    assert isinstance(gen, ScriptedGenerator) and gen.seed == 7


def test_rl_refuses_a_backend_that_cannot_follow_the_policy(tmp_path):
    from drift.backends import policy_backend_class
    from drift.backends.hf import HFGenerator
    from drift.cli import main

    assert policy_backend_class("hf") is HFGenerator
    with pytest.raises(DriftError, match=r"backend 'scripted' cannot sample from a policy.*supports: hf"):
        policy_backend_class("scripted")
    with pytest.raises(SystemExit) as refused:  # not among drift rl's --backend choices
        main(["rl", "--backend", "openai", "--out", str(tmp_path / "rl")])
    assert refused.value.code == 2
    assert not (tmp_path / "rl").exists()  # refused before anything was loaded or written
