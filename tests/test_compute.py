"""Parameters counted from safetensors headers, for a local folder or a hub id in the local cache."""

import numpy as np
import pytest

from drift import DriftError
from drift.compute import count_parameters, known_counts


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


def test_flops_as_run_count_the_tokens_forwarded_not_every_example_s():
    """Training and scoring run a micro-batch's shared prefixes once (drift.packing): counted as run,
    those forwards cost their forwarded tokens; sampling's counts are as run already."""
    from drift.compute import flops_as_run, flops_of

    counts = {"prefilled_tokens": 10, "generated_tokens": 5, "scored_tokens": 8, "reference_tokens": 8,
              "trained_tokens": 20, "scored_forwarded_tokens": 4, "reference_forwarded_tokens": 3,
              "trained_forwarded_tokens": 12}  # fmt: skip
    assert flops_of(100, counts) == 2 * 100 * (10 + 5 + 8 + 8) + 6 * 100 * 20
    assert flops_as_run(100, counts) == 2 * 100 * (10 + 5 + 4 + 3) + 6 * 100 * 12


def test_flops_as_run_are_unknown_where_a_forwarded_count_is_missing():
    """A count made before drift kept the forwarded tokens cannot be recounted: no guess. A nominal
    count of zero needs no forwarded one (an offline run scores nothing)."""
    from drift.compute import flops_as_run

    assert flops_as_run(100, {"prefilled_tokens": 10, "trained_tokens": 20}) is None
    assert flops_as_run(100, {"trained_tokens": 20, "trained_forwarded_tokens": None}) is None
    assert flops_as_run(100, {"prefilled_tokens": 10, "trained_tokens": 20, "trained_forwarded_tokens": 12}) == (
        2 * 100 * 10 + 6 * 100 * 12
    )
    assert flops_as_run(100, {}) == 0.0


@pytest.mark.parametrize("field", ["scored", "reference", "trained"])
def test_any_forwarded_count_missing_makes_flops_as_run_unknown(field):
    from drift.compute import flops_as_run

    counts = {f"{f}_{kind}tokens": 4 for f in ("scored", "reference", "trained") for kind in ("", "forwarded_")}
    assert flops_as_run(100, counts) == 2 * 100 * 8 + 6 * 100 * 4
    del counts[f"{field}_forwarded_tokens"]
    assert flops_as_run(100, counts) is None


def test_a_checkpoint_s_compute_from_before_the_as_run_counts():
    """A checkpoint or log line of an older drift rl: its ``forwarded_tokens`` are the trained
    ones; a forwarded count it never kept is unknown (None, and so is flops_as_run) unless its
    nominal count is 0; a checkpoint of this drift comes back as it was."""
    assert known_counts(None) == {} and known_counts({}) == {}
    old = {"scored_tokens": 10, "reference_tokens": 0, "trained_tokens": 20, "forwarded_tokens": 15}
    assert known_counts(old) == {"scored_tokens": 10, "reference_tokens": 0, "trained_tokens": 20,
                                 "trained_forwarded_tokens": 15, "scored_forwarded_tokens": None,
                                 "reference_forwarded_tokens": 0}  # fmt: skip
    older = {"trained_tokens": 20}  # before drift counted forwarded tokens at all
    assert known_counts(older)["trained_forwarded_tokens"] is None
    new = {"scored_tokens": 10, "scored_forwarded_tokens": 6, "reference_tokens": 0, "reference_forwarded_tokens": 0,
           "trained_tokens": 20, "trained_forwarded_tokens": 15}  # fmt: skip
    assert known_counts(new) == new
