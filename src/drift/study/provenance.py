"""What a study keeps of each run beside its points: the resolved config of every command it ran.

A run's points file (``points/<method>/<run>.json``) says what the run produced; the commands that
made it saved their resolved configs (every option, defaults included: beta, gamma, target,
kl_coef, ...) in ``work/``, which a repository does not keep. When the run finishes,
:func:`collect_configs` gathers them, keyed by stage, into ``points/<method>/<run>.configs.json``
(:func:`configs_file`), and the table notes any option whose value differs between a method's
seeds (:func:`differing_options`). Runs made before that file was written have none; they are left
out of the comparison.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from drift.options import read_yaml
from drift.outputs import sidecar

CONFIGS_SUFFIX = ".configs.json"

# stage: where its command saved its resolved config, in a run folder (drift.options.save_config;
# a file output's config is its sidecar, a folder output's its config.yaml)
STAGES = {"weight": "weighted.config.yaml", "train": "train/config.yaml", "rl": "rl/config.yaml"}

# options that differ between a method's seeds by design: the seed, the paths (each seed's own
# rollouts, data and run folder), and an online run's FLOP budget (a multiple of that seed's budget run)
PER_RUN = frozenset({"seed", "input", "out", "model", "max_flops"})


def run_name(seed: int, lr: float | None) -> str:
    """A run's name: its folder under ``work/runs/<method>/`` and its files under ``points/<method>/``.

    >>> run_name(0, 1e-5), run_name(0, None)
    ('seed0-lr1e-05', 'seed0')
    """
    return f"seed{seed}" + (f"-lr{lr:g}" if lr is not None else "")


def configs_file(points_file: Path) -> Path:
    """``points/drift/seed0-lr1e-05.json`` -> ``points/drift/seed0-lr1e-05.configs.json``."""
    return points_file.with_name(points_file.stem + CONFIGS_SUFFIX)


def is_points_file(path: Path) -> bool:
    """A run's points (a JSON list), not the resolved configs beside it."""
    return path.name.endswith(".json") and not path.name.endswith(CONFIGS_SUFFIX)


def collect_configs(folder: Path) -> dict[str, dict]:
    """The resolved configs a run's commands saved in its ``folder``, keyed by stage (``weight``,
    ``train``, ``rl``), and that of the rollouts it weighted (``rollout``: the sidecar of the weight
    stage's ``input``, shared by the offline methods at one seed and turns). A method's stages are
    the ones it ran: base has none, sft only ``train``."""
    configs = {stage: read_yaml((folder / rel).read_text()) for stage, rel in STAGES.items() if (folder / rel).exists()}
    rolled = sidecar(configs["weight"]["input"], "config.yaml") if "weight" in configs else None
    if rolled is not None and rolled.exists():
        configs = {"rollout": read_yaml(rolled.read_text()), **configs}
    return configs


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    return {k: v for key, sub in value.items() for k, v in _flatten(sub, f"{prefix}.{key}").items()}


def _still_an_option(key: str) -> bool:
    """Whether ``stage.name[.sub]``'s option is one its command (a stage is named after the command
    that ran it: drift.cli.COMMANDS) has today; an option a command has dropped lives on only in the
    configs of runs made before."""
    from drift.cli import COMMANDS

    stage, name = key.split(".")[:2]
    return stage not in COMMANDS or name in {f.name for f in dataclasses.fields(COMMANDS[stage][0])}


def differing_options(by_seed: dict[int, dict]) -> dict[str, dict[str, Any]]:
    """The options (``stage.name``) whose resolved values are not the same in every seed's configs,
    with each seed's value (``None``: the seed's run has no such option); :data:`PER_RUN` left out,
    and options the stage's command no longer has (:func:`_still_an_option`).

    >>> differing_options({0: {"rl": {"kl_coef": 0.0, "seed": 0}}, 2: {"rl": {"kl_coef": 0.1, "seed": 2}}})
    {'rl.kl_coef': {'0': 0.0, '2': 0.1}}
    """
    flat = {seed: {k: v for stage, c in configs.items() for k, v in _flatten(c, stage).items()}
            for seed, configs in by_seed.items()}  # fmt: skip
    keys = sorted(
        {k for options in flat.values() for k in options if k.rsplit(".", 1)[-1] not in PER_RUN and _still_an_option(k)}
    )
    differ = {}
    for key in keys:
        values = {str(seed): options.get(key) for seed, options in sorted(flat.items())}
        if len({repr(v) for v in values.values()}) > 1:
            differ[key] = values
    return differ
