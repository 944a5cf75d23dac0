"""drift study end to end on the tiny random model: tuning on validation, seeds, online curves up
to a FLOP budget, resume, and a table that equals what the reports say."""

import dataclasses
import itertools
import json
import shutil

import pytest

import drift
from drift.cli import main

TINY_STUDY = """
name: tiny
model: {model}
task: arithmetic
task_options: {{digits: 1, ops: "+"}}
max_turns: 2
max_new_tokens: 4
dtype: float32
seeds: [0, 1]
warmup_prompts: 0
train_prompts: 4
k: 2
test_prompts: 4
validation_prompts: 3
lr_grid: [1.0e-3, 1.0e-2]
train: {{epochs: 1, batch_size: 4, micro_batch_size: 4}}
rl: {{prompts_per_step: 2, group_size: 2, lr_scheduler: constant, save_steps: 1}}
budget_method: drift
budget_multiple: 6
snapshot_rounds: [1, 2]
max_rounds: 6
methods:
  - {{name: base, kind: base}}
  - {{name: sft, kind: sft}}
  - {{name: drift, kind: offline, weight: {{all_fail: keep}}}}
  - {{name: drift-beta1, kind: offline, weight: {{beta: 1.0}}, lr_from: drift}}
  - {{name: grpo, kind: online, rl: {{algorithm: grpo, epochs_per_round: 2, minibatches: 2}}}}
  - {{name: iterated-drift, kind: online, rl: {{algorithm: drift}}}}
  - {{name: trl-grpo, kind: online, turns: 1, rl: {{algorithm: trl-grpo}}}}
"""


@pytest.fixture
def study_file(tmp_path, tiny_model):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_STUDY.format(model=tiny_model))
    return path


def test_a_tiny_study_end_to_end(tmp_path, study_file, tiny_model, monkeypatch, capsys):
    from drift.study import methods

    out = tmp_path / "study"
    # the dry run plans without running anything
    assert main(["study", str(study_file), "--out", str(out), "--dry-run"]) == 0
    assert "estimated time left" in capsys.readouterr().out and not out.exists()

    # a crash in the first online run; the rerun continues and does not redo finished runs
    real = methods.KINDS["online"]
    real_offline = methods.KINDS["offline"]

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setitem(methods.KINDS, "online", dataclasses.replace(real, run=crash))
    assert main(["study", str(study_file), "--out", str(out)]) == 130
    finished = {p: p.stat().st_mtime_ns for p in (out / "points").rglob("*.json")}
    assert finished and not (out / "table.json").exists()
    # the table of what is done so far: the offline methods, no online one yet
    assert main(["study", str(study_file), "--out", str(out), "--table-only"]) == 0
    partial = json.loads((out / "table.json").read_text())
    assert {r["method"] for r in partial["rows"]} == {"base", "sft", "drift", "drift-beta1"}
    monkeypatch.setitem(methods.KINDS, "online", real)
    assert main(["study", str(study_file), "--out", str(out)]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()), "finished runs were redone"

    table = json.loads((out / "table.json").read_text())
    rows = table["rows"]
    # every row is exactly what its report says
    reports = sorted((out / "reports").rglob("report.json"))
    assert len(rows) == len(reports) and {r["report"] for r in rows} == {p.relative_to(out).as_posix() for p in reports}
    for row in rows:
        report = json.loads((out / row["report"]).read_text())
        assert row["multi_at_T"] == report["cumulative_accuracy"]["2"]
        assert row["flops"] == report["study"]["compute"]["flops"]
        assert (row["method"], row["seed"], row["round"]) == tuple(
            report["study"][k] for k in ("method", "seed", "round")
        )
        assert report["n"] == 4 and report["config"]["split"] == "test"
        # which code made the run and its evaluation (the commit, in a git checkout such as this one)
        for key in ("code", "eval_code"):
            code = report["study"][key]
            assert code["version"] == drift.__version__ and len(code.get("commit", "x" * 40)) == 40, key
        # a run's end is marked in its report: the last point of its seed, and only that one
        run = [r for r in rows if (r["method"], r["seed"]) == (row["method"], row["seed"])]
        last = max(run, key=lambda r: r["flops"])
        assert report["study"]["final"] == (row is last) == (row["point"] == "final")
    # every method at every seed (base once: one deterministic evaluation of the reference policy)
    seeds = {m: sorted({r["seed"] for r in rows if r["method"] == m}, key=str) for m in {r["method"] for r in rows}}
    assert seeds == {
        "base": [None],
        **{m: [0, 1] for m in ("sft", "drift", "drift-beta1", "grpo", "iterated-drift", "trl-grpo")},
    }
    # tuning: the same grid for every tuned method, on validation, at the tuning seed; variants inherit
    tuning = json.loads((out / "tuning.json").read_text())
    assert set(tuning) == {"sft", "drift", "grpo", "iterated-drift", "trl-grpo"}
    assert all(
        t["tries"] == 2 and t["chosen_lr"] in (1e-3, 1e-2) and t["split"] == "validation" for t in tuning.values()
    )
    beta1 = [r for r in rows if r["method"] == "drift-beta1"]
    assert all(r["lr"] == tuning["drift"]["chosen_lr"] and r["lr_from"] == "drift" for r in beta1)
    validation = json.loads(
        next((out / "work" / "runs" / "grpo").glob("seed0-*/eval/validation/report.json")).read_text()
    )
    assert validation["config"]["split"] == "validation" and validation["n"] == 3
    # online runs are curves that go on to at least budget_multiple x the budget run's FLOPs
    for method in ("grpo", "iterated-drift"):
        for seed in (0, 1):
            curve = sorted((r["round"], r["flops"]) for r in rows if r["method"] == method and r["seed"] == seed)
            assert [c[0] for c in curve][:2] == [1, 2] and len(curve) >= 3
            assert all(a[1] < b[1] for a, b in itertools.pairwise(curve))
            budget = next(r["flops"] for r in rows if r["method"] == "drift" and r["seed"] == seed)
            assert curve[-1][1] >= 6 * budget or curve[-1][0] == 6
    assert all(r["flops"] > 0 for r in rows if r["method"] != "base")
    # counted as run too: every point made by this code has it, and a prefix tree never costs more
    assert all(0 <= r["flops_as_run"] <= r["flops"] for r in rows)
    assert any(r["flops_as_run"] < r["flops"] for r in rows if r["method"] == "grpo")  # a group shares its prompt
    assert all(set(m["as_run"]["per_seed"]) == {"0", "1"} for m in table["match"])
    sft = next(r for r in rows if r["method"] == "sft")
    assert sft["compute"]["generated_tokens"] == 0 and sft["compute"]["trained_tokens"] > 0
    # the summary is the mean of the final points; the match table covers every online method
    drift_summary = next(s for s in table["summary"] if s["method"] == "drift")
    finals = [r["multi_at_T"] for r in rows if r["method"] == "drift"]
    assert drift_summary["multi_at"]["2"] == pytest.approx(sum(finals) / 2)
    assert [m["method"] for m in table["match"]] == ["grpo", "iterated-drift", "trl-grpo"]
    # trl-grpo trains single-turn episodes; it is evaluated on T turns like every method
    trl_runs = sorted((out / "work" / "runs" / "trl-grpo").glob("seed*/rl/rl_summary.json"))
    assert len(trl_runs) == 3  # two learning rates at the tuning seed, the chosen one at seed 1
    for path in trl_runs:
        assert json.loads(path.read_text())["algorithm"] == "trl-grpo"
        assert "max_turns: 1\n" in (path.parent / "config.yaml").read_text()
    assert next(r for r in rows if r["method"] == "trl-grpo")["n"] == 4
    assert (out / "frontier.png").stat().st_size > 0 and (out / "accuracy_by_turn.png").stat().st_size > 0
    # beside its points, every run keeps the resolved configs of the commands it ran (work/ is not kept)
    drift_lr = tuning["drift"]["chosen_lr"]
    for seed in (0, 1):
        configs = json.loads((out / "points" / "drift" / f"seed{seed}-lr{drift_lr:g}.configs.json").read_text())
        assert set(configs) == {"rollout", "weight", "train"}
        assert configs["weight"]["all_fail"] == "keep" and configs["weight"]["beta"] == 0.1  # (beta: the default)
        assert configs["train"]["lr"] == drift_lr and configs["train"]["seed"] == seed
        assert configs["rollout"]["n"] == 2 and configs["rollout"]["seed"] == seed
    beta1 = json.loads((out / "points" / "drift-beta1" / f"seed1-lr{drift_lr:g}.configs.json").read_text())
    assert beta1["weight"]["beta"] == 1.0 and beta1["weight"]["gamma"] == 0.9
    grpo = json.loads((out / "points" / "grpo" / f"seed1-lr{tuning['grpo']['chosen_lr']:g}.configs.json").read_text())
    assert set(grpo) == {"rl"} and grpo["rl"]["epochs_per_round"] == 2 and "kl_coef" in grpo["rl"]
    assert json.loads((out / "points" / "base" / "seed0.configs.json").read_text()) == {}
    # the reference policy (here the tiny model itself: warmup_prompts 0) is pinned by its weights
    from drift.study.resume import fingerprint

    pinned = json.loads((out / "reference.json").read_text())
    assert pinned["sha256"] == fingerprint(tiny_model) and len(pinned["sha256"]) == 64
    # ... and the table compares them between seeds: the same options (paths, seeds, budgets aside)
    compared = {s["method"]: s["resolved_options"] for s in table["summary"]}
    assert compared.pop("base") == {"seeds": [], "differ": {}}
    assert all(c == {"seeds": [0, 1], "differ": {}} for c in compared.values()) and len(compared) == 6
    assert "- grpo (seeds 0,1): resolved options agree across seeds\n" in (out / "table.md").read_text()
    assert "| drift |" in (out / "table.md").read_text()
    # models are deleted once evaluated; rerunning rebuilds the same table from the reports
    assert not list((out / "work" / "runs").rglob("model.safetensors"))
    assert main(["study", str(study_file), "--out", str(out)]) == 0
    assert json.loads((out / "table.json").read_text()) == table
    assert len(list((out / "tuning").rglob("*.json"))) == 5 * 2  # every tuning run's validation report
    # what a repository keeps (no work/) is enough to continue: nothing runs again
    shutil.rmtree(out / "work")
    capsys.readouterr()
    assert main(["study", str(study_file), "--out", str(out), "--dry-run"]) == 0
    plan = {line[:16].strip(): line[16:].split()[:2] for line in capsys.readouterr().out.splitlines()[2:-1]}
    assert plan["validation eval"] == ["10", "10"] and plan["test eval"][0] == plan["test eval"][1]
    monkeypatch.setitem(methods.KINDS, "online", dataclasses.replace(real, run=crash))
    monkeypatch.setitem(methods.KINDS, "offline", dataclasses.replace(methods.KINDS["offline"], run=crash))
    assert main(["study", str(study_file), "--out", str(out)]) == 0
    assert json.loads((out / "table.json").read_text()) == table
    # a run whose test report was never written and whose models are gone is made again
    monkeypatch.setitem(methods.KINDS, "offline", real_offline)
    (out / "reports" / "drift" / "seed-1" / "final" / "report.json").unlink()
    assert main(["study", str(study_file), "--out", str(out)]) == 0
    assert (out / "reports" / "drift" / "seed-1" / "final" / "report.json").exists()
    # ... and so is an online run with some of its points evaluated: every point of its curve comes
    # from the new run (its old snapshots' reports are not mixed with the new run's), and at the
    # tuning seed the validation score of the chosen run is the new run's too
    monkeypatch.setitem(methods.KINDS, "online", real)
    chosen = f"seed0-lr{tuning['grpo']['chosen_lr']:g}.json"
    for seed in (1, 0):
        old = {p: p.stat().st_mtime_ns for p in (out / "reports" / "grpo" / f"seed-{seed}").rglob("report.json")}
        validation = (out / "tuning" / "grpo" / chosen).stat().st_mtime_ns
        max(old).unlink()  # the run's end, its last round
        assert main(["study", str(study_file), "--out", str(out)]) == 0
        assert all(p.stat().st_mtime_ns != t for p, t in old.items()), "a report of the old run was kept"
        assert ((out / "tuning" / "grpo" / chosen).stat().st_mtime_ns != validation) == (seed == 0)
    assert json.loads((out / "tuning.json").read_text()) == tuning
