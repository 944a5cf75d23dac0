"""Shipped config files stay valid as options change."""

from pathlib import Path

import pytest

from drift import DriftError
from drift import config as C
from drift.options import add_arguments, load_yaml, resolve

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"
CLASSES = {"rollout": C.RolloutConfig, "weight": C.WeightConfig, "train": C.TrainConfig, "eval": C.EvalConfig}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_paper_configs_load_with_their_command(name):
    values = load_yaml(PAPER / f"{name}.yaml", CLASSES[name])
    assert values, f"{name}.yaml is empty"
    resolve(CLASSES[name], **values)


def test_scheme_and_backend_names_come_from_their_tables(tmp_path, monkeypatch, capsys):
    """--scheme and --backend accept what drift.weighting.SCHEMES and drift.backends.BACKENDS hold
    (registering a new one is enough), on the command line and in YAML, and nothing else."""
    import argparse

    from drift.backends import BACKENDS
    from drift.weighting import SCHEMES, Scheme, sft_weights

    monkeypatch.setitem(SCHEMES, "mine", Scheme(sft_weights))
    monkeypatch.setitem(BACKENDS, "remote", "somewhere:Remote")
    parser = argparse.ArgumentParser()
    add_arguments(parser, C.RLConfig)
    args = parser.parse_args(["--scheme", "mine", "--backend", "remote"])
    assert resolve(C.RLConfig, args).scheme == "mine" and args.backend == "remote"
    with pytest.raises(SystemExit):
        parser.parse_args(["--scheme", "nope"])
    assert "choose from drift, rwr, sft, rft, mine" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: 0.2\nscheme: nope\n")
    with pytest.raises(DriftError, match=r"bad.yaml:2: key 'scheme' must be one of .*mine"):
        load_yaml(bad, C.WeightConfig)


def test_weighting_defaults_live_in_one_place():
    """Every command with weighting options gets the same defaults, from WeightingOptions."""
    from dataclasses import fields

    base = {f.name: f.default for f in fields(C.WeightingOptions)}
    for cls in (C.WeightConfig, C.RLConfig):
        assert {f.name: f.default for f in fields(cls) if f.name in base} == base
    assert C.RLConfig().weighting() == C.WeightConfig().weighting()
