"""Study files: what is checked, and where errors point."""

import pytest

from drift import DriftError
from drift.study.spec import load_spec

GOOD = """name: s
seeds: [0, 2]
rl: {lr_scheduler: constant}
methods:
  - {name: base, kind: base}
  - {name: drift, kind: offline, weight: {all_fail: drop}}
  - name: rl
    kind: online
    rl: {algorithm: grpo, epochs_per_round: 2}
"""


def test_a_good_file_loads(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    spec = load_spec(path)
    assert [m.name for m in spec.method_specs()] == ["base", "drift", "rl"] and spec.method("rl").rl[
        "epochs_per_round"
    ] == 2


@pytest.mark.parametrize(
    "change, message",
    [
        (("kind: online", "kind: onlin"), ":7: method 3 (rl): kind must be one of"),
        (("all_fail: drop", "all_fail: maybe"), ":6: method 2 (drift): weight.all_fail must be one of"),
        (("epochs_per_round: 2", "epochs_per_round: two"), ":7: method 3 (rl): rl.epochs_per_round must be int"),
        (("epochs_per_round: 2", "lr: 0.1"), "rl.lr is set by the study for every run"),
        (("epochs_per_round: 2", "nonsense: 1"), "rl.nonsense is not an option of drift rl"),
        (("seeds: [0, 2]", "seeds: [2, 3]"), "tuning_seed 0 must be one of the seeds"),
        (("seeds: [0, 2]", "seeds: [0, 1]"), "seed 1 trains on the problems of the format warm-up"),
        (("{name: base, kind: base}", "{name: drift, kind: base}"), "the name 'drift' is used twice"),
        (("name: s", "nmae: s"), ":1: key 'nmae' is not an option"),
        (("seeds: [0, 2]", "seeds: [0, 2]\nlr_grid: []"), "lr_grid and seeds must not be empty"),
        (("weight: {all_fail: drop}", "weight: null"), "method 2 (drift): 'weight' must be a mapping"),
        (("weight: {all_fail: drop}", "lr_from: base"), "lr_from must name a method that is tuned"),
        (
            ("algorithm: grpo", "algorithm: trl-grpo"),
            "trl-grpo trains single-turn episodes; give the method 'turns: 1'",
        ),
        (("epochs_per_round: 2", "lr_scheduler: cosine"), "rl.lr_scheduler 'cosine' decays over max_rounds"),
        (("epochs_per_round: 2", "temperature: 0.7"), "rl.temperature is set by the study"),
        (("epochs_per_round: 2", "top_p: 0.9"), "rl.top_p is set by the study"),
        (("epochs_per_round: 2", "model_generation_config: true"), "rl.model_generation_config is set by the study"),
    ],
)
def test_errors_name_the_file_line_and_field(tmp_path, change, message):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD.replace(*change))
    with pytest.raises(DriftError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_study_folder_takes_new_methods_but_not_changes(tmp_path):
    from drift.study.resume import check_same_study

    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    saved = tmp_path / "study.yaml"
    import yaml

    saved.write_text(yaml.safe_dump(load_spec(path).__dict__))
    path.write_text(GOOD + "  - {name: sft, kind: sft}\n")
    check_same_study(saved, load_spec(path))  # a method added: fine
    path.write_text(GOOD.replace("all_fail: drop", "all_fail: keep"))
    with pytest.raises(DriftError, match="differs in method drift"):
        check_same_study(saved, load_spec(path))
    path.write_text(GOOD.replace("seeds: [0, 2]", "seeds: [0, 2, 3]"))
    with pytest.raises(DriftError, match="differs in seeds"):
        check_same_study(saved, load_spec(path))


def test_snapshot_rounds_may_be_added_but_not_removed(tmp_path):
    """More snapshots only add points to runs still to come; fewer would orphan evaluated ones."""
    from drift.study.resume import check_same_study

    path, saved = tmp_path / "s.yaml", tmp_path / "study.yaml"
    path.write_text(GOOD + "snapshot_rounds: [1, 2, 4]\n")
    import yaml

    saved.write_text(yaml.safe_dump(load_spec(path).__dict__))
    path.write_text(GOOD + "snapshot_rounds: [1, 2, 3, 4, 6]\n")
    check_same_study(saved, load_spec(path))
    path.write_text(GOOD + "snapshot_rounds: [1, 4]\n")
    with pytest.raises(DriftError, match="differs in snapshot_rounds"):
        check_same_study(saved, load_spec(path))


def test_without_a_warm_up_every_seed_is_allowed(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD.replace("seeds: [0, 2]", "seeds: [0, 1]\nwarmup_prompts: 0"))
    assert load_spec(path).seeds == [0, 1]


def test_a_method_left_out_and_brought_back_changed_is_refused(tmp_path):
    """The saved study keeps a method the file stopped listing, so it cannot return changed."""
    from drift.study.resume import check_same_study, write_study

    path, saved = tmp_path / "s.yaml", tmp_path / "study.yaml"
    path.write_text(GOOD)
    write_study(saved, load_spec(path))
    path.write_text(GOOD[: GOOD.index("  - name: rl")])
    check_same_study(saved, load_spec(path))  # left out: fine
    write_study(saved, load_spec(path))
    path.write_text(GOOD.replace("epochs_per_round: 2", "epochs_per_round: 3"))
    with pytest.raises(DriftError, match="differs in method rl"):
        check_same_study(saved, load_spec(path))


@pytest.mark.parametrize("name", ["addition", "mixed", "paper_table"])
def test_the_shipped_study_files_load(name):
    from pathlib import Path

    spec = load_spec(Path(__file__).parents[2] / "configs" / "study" / f"{name}.yaml")
    kinds = {m.kind for m in spec.method_specs()}
    assert {"base", "offline", "online"} <= kinds and spec.budget_method in [m.name for m in spec.method_specs()]


@pytest.mark.parametrize("flag", ["--table-only", "--dry-run"])
def test_a_changed_study_file_does_not_rebuild_or_plan_another_study(tmp_path, capsys, flag):
    """``--table-only`` and ``--dry-run`` check the study folder like a run: a table built with the
    edited file's budget method or seeds would not be the study that made the reports."""
    from drift.cli import main
    from drift.study.resume import write_study

    path, out = tmp_path / "s.yaml", tmp_path / "out"
    path.write_text(GOOD)
    (out / "reports").mkdir(parents=True)
    write_study(out / "study.yaml", load_spec(path))
    path.write_text(GOOD.replace("seeds: [0, 2]", "seeds: [0, 2, 3]"))
    assert main(["study", str(path), "--out", str(out), flag]) == 2
    assert "differs in seeds" in capsys.readouterr().err
    assert not (out / "table.json").exists()
