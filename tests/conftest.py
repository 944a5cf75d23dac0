"""Shared fixtures: a tiny random chat model built once per session, and record builders."""

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Folder of a 2-layer random Llama with a ChatML template (see drift.tiny)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from drift.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))
