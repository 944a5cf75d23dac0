"""Shipped config files stay valid as options change."""

from pathlib import Path

import pytest

from drift import config as C

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"
CLASSES = {"rollout": C.RolloutConfig, "weight": C.WeightConfig, "train": C.TrainConfig, "eval": C.EvalConfig}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_paper_configs_load_with_their_command(name):
    values = C.load_yaml(PAPER / f"{name}.yaml", CLASSES[name])
    assert values, f"{name}.yaml is empty"
    C.resolve(CLASSES[name], **values)
