"""What a rerun of drift study reuses, and what it refuses to: fast, with stand-in runs and
evaluations (test_run.py runs the real ones on a tiny model)."""

import json

import pytest

from drift import DriftError
from drift.outputs import write_json
from drift.study.run import Study
from drift.study.spec import StudySpec


def test_rollouts_with_uncounted_chunks_are_refused(tmp_path):
    """Their summary counts fewer tokens than were sampled: DRIFT's FLOPs, and every online budget
    set by them, would be low."""
    study = Study(StudySpec(methods=[{"name": "drift", "kind": "offline"}], max_turns=2, seeds=[0]), tmp_path)
    summary = tmp_path / "work" / "rollouts" / "seed0-turns2.summary.json"
    write_json(summary, {"tokens_generated": 10, "tokens_prefilled": 20, "wall_seconds": 1.0, "uncounted_chunks": 1})
    with pytest.raises(DriftError, match="1 chunk") as err:
        study.rollouts(0, 2)
    assert "seed0-turns2.*" in str(err.value)
    write_json(summary, {**json.loads(summary.read_text()), "uncounted_chunks": 0})
    assert study.rollouts(0, 2)[1]["tokens_generated"] == 10


STUDY = """
name: fake
model: stand-in
task: arithmetic
max_turns: 2
seeds: [0, 2]
warmup_prompts: 0
lr_grid: [1.0e-3, 1.0e-2]
rl: {lr_scheduler: constant}
budget_method: sft
snapshot_rounds: [1, 2]
methods:
  - {name: base, kind: base}
  - {name: sft, kind: sft}
  - {name: rl, kind: online}
"""


class StandIns:
    """Runs and evaluations that take no time: each run is numbered (its compute says which), its
    models are folders, and a model's score is ``scores[run folder name]`` (default 0.5)."""

    def __init__(self, monkeypatch):
        from drift.study import methods
        from drift.study.methods import Point, with_flops

        self.runs = 0
        self.scores: dict[str, float] = {}
        self.kill_at: str | None = None  # "validation": the next validation evaluation is killed

        def run(study, method, seed, lr, folder, rounds=(None,)):
            self.runs += 1
            points = []
            for r in rounds:
                model = folder / ("model" if r in (None, rounds[-1]) else f"snapshots/round-{r:05d}")
                model.mkdir(parents=True, exist_ok=True)
                compute = {"trained_tokens": 10 * self.runs + (r or 0), "training_seconds": float(self.runs)}
                points.append(Point(str(model), r, with_flops(1, compute)))
            return points

        def evaluate(cfg):
            if self.kill_at == cfg.split:
                self.kill_at = None
                raise KeyboardInterrupt
            run = cfg.model.split("/runs/")[-1].split("/")[1] if "/runs/" in cfg.model else "base"
            score = self.scores.get(run, 0.5)
            report = {"n": 4, "cumulative_accuracy": {"1": score / 2, "2": score}, "wall_seconds": 1.0}
            write_json(f"{cfg.out}/report.json", report)

        monkeypatch.setitem(methods.KINDS, "sft", methods.Kind(run))
        online = methods.Kind(lambda *a: run(*a, rounds=(1, 2, 3)))
        monkeypatch.setitem(methods.KINDS, "online", online)
        monkeypatch.setattr("drift.evaluate.run_eval", evaluate)
        monkeypatch.setattr(Study, "parameters", lambda self: 1)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    path = tmp_path / "fake.yaml"
    path.write_text(STUDY)
    stand_ins = StandIns(monkeypatch)
    stand_ins.scores = {"seed0-lr0.001": 0.6, "seed0-lr0.01": 0.4}  # lr 1e-3 wins for both
    return path, tmp_path / "study", stand_ins


def study(path, out, *flags) -> int:
    from drift.cli import main

    return main(["study", str(path), "--out", str(out), *flags])


def _edit_report(path, **study_fields):
    report = json.loads(path.read_text())
    report["study"].update(study_fields)
    path.write_text(json.dumps(report))


@pytest.mark.parametrize(
    "leftover, message",
    [
        ("sft/seed-2/final", "lr 0.01"),  # of the other learning rate
        ("rl/seed-2/round-00002", "compute"),  # of another run at the same learning rate
        ("rl/seed-2/round-00009", "not one of its points"),  # a round this run never had
    ],
)
def test_a_report_of_another_run_is_refused(fake, capsys, leftover, message):
    """Report paths carry no learning rate, so a report left by another run would be taken as this
    run's: a rerun refuses it, and says what to delete."""
    path, out, _ = fake
    assert study(path, out) == 0
    report = out / "reports" / leftover / "report.json"
    if report.exists():
        _edit_report(report, **({"lr": 1e-2} if "sft" in leftover else {"compute": {"flops": 1.0}}))
    else:
        report.parent.mkdir()
        (out / "reports" / "rl" / "seed-2" / "round-00002" / "report.json").rename(report)
    capsys.readouterr()
    assert study(path, out) == 2
    err = capsys.readouterr().err
    assert str(report) in err and message in err and f"delete {report.parents[1]}" in err


def _lose_models_and_the_end_of(out, run: str):
    """A fresh clone (no ``work/``) whose ``run`` (``method/seed-s``) lacks the report of its end:
    the run must be made again."""
    import shutil

    shutil.rmtree(out / "work")
    reports = sorted((out / "reports" / run).rglob("report.json"))
    reports[-1].unlink()
    return reports


def _of_its_points(out, method: str, seed: int, lr: str) -> bool:
    points = json.loads((out / "points" / method / f"seed{seed}-lr{lr}.json").read_text())
    reports = sorted((out / "reports" / method / f"seed-{seed}").rglob("report.json"))
    computes = [json.loads(p.read_text())["study"]["compute"] for p in reports]
    return computes == [p["compute"] for p in points]


def test_a_run_made_again_is_resumed_after_a_kill_mid_way(fake, monkeypatch):
    """Killed while the old run's files are deleted, the rerun finishes deleting them (no report of
    the old run is left beside the new run's points), and nothing of the remaking is left over."""
    import shutil

    path, out, _ = fake
    assert study(path, out) == 0
    _lose_models_and_the_end_of(out, "rl/seed-2")
    real = shutil.rmtree

    def killed(where, *args, **kwargs):
        if "/work/runs/rl/seed2" in str(where):
            raise KeyboardInterrupt
        return real(where, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed)
    assert study(path, out) == 130
    monkeypatch.setattr(shutil, "rmtree", real)
    assert study(path, out) == 0
    assert _of_its_points(out, "rl", 2, "0.001") and len(list((out / "reports" / "rl" / "seed-2").iterdir())) == 3
    assert not (out / "remaking").exists() or not list((out / "remaking").rglob("*.json"))


def test_a_tuning_run_made_again_is_validated_again_even_after_a_kill(fake):
    """The new run of the chosen learning rate scores 0.55 on validation (the old one 0.6): killed
    during that evaluation, the rerun still measures it, and tuning.json says 0.55."""
    path, out, stand_ins = fake
    assert study(path, out) == 0
    _lose_models_and_the_end_of(out, "rl/seed-0")
    stand_ins.scores["seed0-lr0.001"] = 0.55
    stand_ins.kill_at = "validation"
    assert study(path, out) == 130
    assert study(path, out) == 0
    kept = json.loads((out / "tuning" / "rl" / "seed0-lr0.001.json").read_text())
    tuning = json.loads((out / "tuning.json").read_text())["rl"]
    assert kept["cumulative_accuracy"]["2"] == 0.55 == tuning["validation_multi_at_T"]["0.001"]
    assert tuning["chosen_lr"] == 1e-3 and _of_its_points(out, "rl", 0, "0.001")


def test_a_chosen_lr_that_no_longer_wins_is_refused_until_resolved(fake, capsys):
    """Made again, the chosen run scores 0.3 on validation, below lr 1e-2's 0.4: every rerun
    refuses (not only the first), and doing what the message says resolves it."""
    import shutil

    path, out, stand_ins = fake
    assert study(path, out) == 0
    before = (out / "tuning.json").read_text()
    _lose_models_and_the_end_of(out, "rl/seed-0")
    stand_ins.scores["seed0-lr0.001"] = 0.3
    for _ in range(2):
        capsys.readouterr()
        assert study(path, out) == 2
        err = capsys.readouterr().err
        assert "lr 0.01 would now win over the chosen 0.001" in err
        assert (out / "tuning.json").read_text() == before
    # what the message says: delete the method's tuning entry, remaking marker and reports
    for name in ("remaking/rl", "reports/rl"):
        assert f"{out / name}" in err
        shutil.rmtree(out / name)
    tuning = json.loads(before)
    del tuning["rl"]
    (out / "tuning.json").write_text(json.dumps(tuning))
    assert study(path, out) == 0
    assert json.loads((out / "tuning.json").read_text())["rl"]["chosen_lr"] == 1e-2
    assert all(_of_its_points(out, "rl", seed, "0.01") for seed in (0, 2))


def _save_weights(folder, tensors: dict, metadata=None):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)


def test_the_fingerprint_of_a_model_is_its_tensors(tmp_path):
    """The same tensors give the same fingerprint whatever order and metadata the file was written
    with; one changed value changes it; a hub name (no local folder) has none."""
    import numpy as np

    from drift.study.resume import fingerprint

    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, dtype=np.float16)
    _save_weights(tmp_path / "one", {"a": a, "b": b})
    _save_weights(tmp_path / "two", {"b": b, "a": a}, metadata={"format": "pt"})
    changed = a.copy()
    changed[1, 2] = 5.5
    _save_weights(tmp_path / "three", {"a": changed, "b": b})
    one = fingerprint(str(tmp_path / "one"))
    assert one is not None and len(one) == 64
    assert fingerprint(str(tmp_path / "two")) == one != fingerprint(str(tmp_path / "three"))
    assert fingerprint("org/some-hub-model") is None


WARMED = STUDY.replace("warmup_prompts: 0", "warmup_prompts: 8")


@pytest.fixture
def warmed(fake, monkeypatch):
    """The fake study with a stand-in format warm-up whose weights are ``weights[0]`` (a value)."""
    import numpy as np

    path, out, _ = fake
    path.write_text(WARMED)
    weights = [1.0]

    def format_warmup(folder, shared, preset, seed, timings):
        model = folder / "warmup" / "train" / "model"
        _save_weights(model, {"w": np.full(3, weights[0], dtype=np.float32)})
        return str(model)

    monkeypatch.setattr("drift.demo.format_warmup", format_warmup)
    return path, out, weights


def _remake_the_reference(out):
    """A fresh clone (no work/) that lacks the base row's report: the reference is made again."""
    import shutil

    shutil.rmtree(out / "work")
    (out / "reports" / "base" / "report.json").unlink()


def test_a_reference_made_again_otherwise_is_refused(warmed, capsys):
    """The study folder pins the reference policy's weights (reference.json); made again (a fresh
    clone) with other weights, new runs would start from another reference than the kept ones:
    refused, at every rerun, until the folder is changed as the message says."""
    from drift.study.resume import fingerprint

    path, out, weights = warmed
    assert study(path, out) == 0
    model = out / "work" / "reference" / "warmup" / "train" / "model"
    pinned = json.loads((out / "reference.json").read_text())
    assert pinned["sha256"] == fingerprint(str(model)) and pinned["code"]["version"]
    # made again with the same weights: nothing to say
    _remake_the_reference(out)
    assert study(path, out) == 0 and json.loads((out / "reference.json").read_text()) == pinned
    # made again otherwise: refused, and the base row is not evaluated on it
    _remake_the_reference(out)
    weights[0] = 2.0
    for _ in range(2):
        capsys.readouterr()
        assert study(path, out) == 2
        err = capsys.readouterr().err
        assert "different reference" in err and "new --out" in err and f"delete {out / 'reference.json'}" in err
        assert not (out / "reports" / "base" / "report.json").exists()
    # accepted, as the message says
    (out / "reference.json").unlink()
    assert study(path, out) == 0
    assert json.loads((out / "reference.json").read_text())["sha256"] == fingerprint(str(model)) != pinned["sha256"]


def test_a_study_made_before_reference_json_records_it_and_says_so(warmed, capsys):
    path, out, _ = warmed
    assert study(path, out) == 0
    (out / "reference.json").unlink()
    _remake_the_reference(out)
    capsys.readouterr()
    assert study(path, out) == 0
    assert "reference.json" in capsys.readouterr().out and (out / "reference.json").exists()
