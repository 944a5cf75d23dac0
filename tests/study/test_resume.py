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
