"""Parameters counted from safetensors headers, for a local folder or a hub id in the local cache."""

import numpy as np
import pytest

from drift import DriftError
from drift.compute import count_parameters


def _model_folder(path):
    from safetensors.numpy import save_file

    path.mkdir()
    save_file({"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float32)}, str(path / "model.safetensors"))
    return path


def test_a_folders_parameters_are_read_from_the_headers(tmp_path):
    assert count_parameters(_model_folder(tmp_path / "m")) == 3 * 4 + 5


def test_a_hub_id_is_counted_from_its_cached_snapshot(tmp_path, monkeypatch):
    """drift's commands accept hub ids (resolve_model returns them as they are): their compute is
    counted from the local hub cache, never downloaded."""
    import huggingface_hub

    folder = _model_folder(tmp_path / "snapshot")
    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append((repo_id, kwargs.get("local_files_only")))
        if repo_id != "Org/Model":
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert count_parameters("Org/Model") == 17
    assert asked == [("Org/Model", True)]
    with pytest.raises(DriftError, match=r"Other/Model.*local"):
        count_parameters("Other/Model")
