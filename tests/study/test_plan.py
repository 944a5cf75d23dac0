"""drift study --dry-run: what it counts as done."""

import json

from drift.study.plan import measured_seconds, plan
from drift.study.spec import StudySpec


def _spec(**kw) -> StudySpec:
    return StudySpec(
        methods=[{"name": "drift", "kind": "offline"}], max_turns=2, seeds=[0, 2], lr_grid=[1e-3, 1e-2], **kw
    )


def _done(out, name: str) -> None:
    path = out / "points" / "drift" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    compute = {"training_seconds": 1.0, "sampling_seconds": 1.0}
    path.write_text(json.dumps([{"model": "m", "round": None, "compute": compute}]))


def test_rollouts_whose_runs_are_all_done_are_not_left(tmp_path):
    """A fresh clone has no work/rollouts, but seed 0's runs are done: only seed 2's are left."""
    for name in ("seed0-lr0.001", "seed0-lr0.01"):
        _done(tmp_path, name)
    units = {unit: (count, done) for unit, count, done in plan(_spec(warmup_prompts=0), tmp_path)}
    assert units["rollouts"] == (2, 1) and units["offline run"] == (3, 2)


def test_a_warm_up_killed_while_training_is_not_done(tmp_path):
    train = tmp_path / "work" / "reference" / "warmup" / "train"
    (train / "checkpoints").mkdir(parents=True)
    units = {unit: (count, done) for unit, count, done in plan(_spec(), tmp_path)}
    assert units["warm-up"] == (1, 0)
    (train / "model").mkdir()
    (train / "model" / "config.json").write_text("{}")
    units = {unit: (count, done) for unit, count, done in plan(_spec(), tmp_path)}
    assert units["warm-up"] == (1, 1)


def test_a_run_s_resolved_configs_are_not_a_run(tmp_path):
    """``points/<method>/<run>.configs.json`` lies beside the run's points file: one run, not two."""
    for name in ("seed0-lr0.001", "seed0-lr0.01"):
        _done(tmp_path, name)
        (tmp_path / "points" / "drift" / f"{name}.configs.json").write_text(json.dumps({"train": {"lr": 0.001}}))
    units = {unit: (count, done) for unit, count, done in plan(_spec(warmup_prompts=0), tmp_path)}
    assert units["rollouts"] == (2, 1) and units["offline run"] == (3, 2)
    assert measured_seconds(_spec(warmup_prompts=0), tmp_path)["offline run"] == 1.0
