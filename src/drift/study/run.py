"""``drift study``: tune, run and evaluate every method of a study file, then write its table.

Order of work (every unit is skipped when its output exists, so rerunning the same command after a
kill continues; models are deleted once every evaluation that needs them is written):

1. the reference policy (``work/reference``: drift demo's format warm-up), evaluated on the test split;
2. tuning: for every method that is tuned, one run per learning rate of ``lr_grid`` at
   ``tuning_seed``, its final model evaluated on the *validation* split; the best multi@T wins
   (ties: the first in the grid); offline methods first, as online budgets are set by one of them;
3. every method at its chosen learning rate and every seed (the tuning seed's run is the tuning
   run itself), each point evaluated on the *test* split: ``reports/<method>/seed-<s>/<point>/report.json``
   with the compute that point cost. Seed by seed (the tuning seed first): after each pass the
   table holds one more seed of every method;
4. ``table.json``, ``table.md`` and the figures (drift.study.results), after every pass.

Folders in ``--out``: ``study.yaml`` (the resolved study), ``reference.json`` (the reference
policy's fingerprint: drift.study.resume.check_reference), ``tuning.json`` and ``tuning/`` (the
validation reports), ``points/`` (each finished run's points and compute, and beside them the
resolved configs of its commands: drift.study.provenance), ``reports/``,
``remaking/`` (a run being made again: see ``Study._remake``), the table and figures: small, and
all a rerun needs to skip what is done, so a study continues from a fresh clone of a repository
that holds them; and ``work/`` (rollouts, run folders, evaluation records: large, not for git).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from drift import DriftError
from drift import config as C
from drift.options import default_of
from drift.outputs import write_json
from drift.study.methods import KINDS, Point
from drift.study.provenance import collect_configs, configs_file, run_name
from drift.study.resume import check_kept_reports, check_reference, check_same_study, code_version, write_study
from drift.study.spec import WARMUP_SEED, MethodSpec, StudySpec, load_spec


class ModelGone(DriftError):
    """A point's model is not on disk and its evaluation was never written."""


def log(message: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _tag(point: Point) -> str:
    return "final" if point.round is None else f"round-{point.round:05d}"


class Study:
    """The shared pieces of one study: its reference policy, rollouts, runs and evaluations."""

    def __init__(self, spec: StudySpec, out: Path):
        self.spec, self.out, self.work = spec, out, out / "work"
        self._reference: str | None = None
        self._parameters: int | None = None
        self.tuning: dict = json.loads((out / "tuning.json").read_text()) if (out / "tuning.json").exists() else {}
        self.code = code_version()

    # -- shared pieces ---------------------------------------------------------------------

    def reference(self) -> str:
        """The model every method starts from: drift demo's format warm-up of ``model`` (or the
        model itself with ``warmup_prompts: 0``), the one ``reference.json`` records."""
        if self._reference is None:
            from drift.demo import format_warmup

            spec, reference = self.spec, self.spec.model
            if spec.warmup_prompts:
                preset = {"warmup_prompts": spec.warmup_prompts, "warmup_lr": spec.warmup_lr}
                preset.update(
                    {k: spec.train.get(k, default_of(C.TrainConfig, k)) for k in ("batch_size", "micro_batch_size")}
                )
                reference = format_warmup(
                    self.work / "reference", {**spec.shared(), "seed": WARMUP_SEED}, preset, WARMUP_SEED, {}
                )
            if note := check_reference(self.out, reference, self.code):
                log(note)
            self._reference = reference
        return self._reference

    def parameters(self) -> int:
        if self._parameters is None:
            from drift.compute import count_parameters
            from drift.models import resolve_model

            self._parameters = count_parameters(resolve_model(self.reference()))
        return self._parameters

    def rollouts(self, seed: int, turns: int) -> tuple[Path, dict]:
        """K trajectories per training problem from the reference policy (shared by every offline
        method with these turns and seed), and their summary (refused if its token counts are short)."""
        from drift.rollout import run_rollout

        path = self.work / "rollouts" / f"seed{seed}-turns{turns}.jsonl"
        summary = path.with_suffix(".summary.json")
        if not summary.exists():
            log(f"rollouts: seed {seed}, {turns} turns")
            run_rollout(
                C.RolloutConfig(
                    **{**self.spec.shared(), "max_turns": turns, "model": self.reference()},
                    num_prompts=self.spec.train_prompts,
                    split="train",
                    n=self.spec.k,
                    temperature=self.spec.rollout_temperature,
                    seed=seed,
                    out=str(path),
                    resume=True,
                )
            )
        rolled = json.loads(summary.read_text())
        if rolled.get("uncounted_chunks", 0):  # a kill between a chunk's records and its counters
            raise DriftError(
                f"{summary}: {rolled['uncounted_chunks']} chunk(s) of these rollouts were sampled but their tokens "
                f"not counted, so the FLOPs of the runs on them (and the online budgets they set) would be low; "
                f"delete {path.parent / (path.stem + '.*')} to roll them out again"
            )
        return path, rolled

    def budget(self, seed: int) -> float:
        """The FLOPs of the budget method's run at ``seed`` (at its chosen learning rate)."""
        method = self.spec.method(self.spec.budget_method)
        return self.points(method, seed, self.lr(method))[-1].compute["flops"]

    # -- runs ------------------------------------------------------------------------------

    def folder(self, method: MethodSpec, seed: int, lr: float | None) -> Path:
        return self.work / "runs" / method.name / run_name(seed, lr)

    def points(self, method: MethodSpec, seed: int, lr: float | None) -> list[Point]:
        """Run ``method`` at ``seed`` and ``lr`` (or read ``points/<method>/<run>.json``): its points.
        The resolved configs of its commands go beside them first (the points file marks it done)."""
        folder, done = self.folder(method, seed, lr), self.points_file(method, seed, lr)
        if done.exists():
            return [Point(**p) for p in json.loads(done.read_text())]
        log(f"{method.name}: seed {seed}, lr {lr}")
        folder.mkdir(parents=True, exist_ok=True)
        points = [
            dataclasses.replace(p, code=self.code) for p in KINDS[method.kind].run(self, method, seed, lr, folder)
        ]
        write_json(configs_file(done), collect_configs(folder))
        write_json(done, [p.__dict__ for p in points])
        return points

    def points_file(self, method: MethodSpec, seed: int, lr: float | None) -> Path:
        return self.out / "points" / method.name / f"{self.folder(method, seed, lr).name}.json"

    def with_models(self, method: MethodSpec, seed: int, lr: float | None, use: Callable[[list[Point]], Any]):
        """``use(points)`` of a run; if a model it needs went with an earlier ``work/`` (a fresh
        clone holds the points but no models), the run is made again first (:meth:`_remake`)."""
        marker = self.remaking_file(method, seed, lr)
        if not marker.exists():
            try:
                return use(self.points(method, seed, lr))
            except ModelGone as gone:
                log(f"{gone}: running {method.name} (seed {seed}, lr {lr}) again")
                write_json(marker, {"stage": "clearing", "why": str(gone)})
        return use(self._remake(method, seed, lr, marker))

    def remaking_file(self, method: MethodSpec, seed: int, lr: float | None) -> Path:
        return self.out / "remaking" / method.name / f"{self.folder(method, seed, lr).name}.json"

    def _remake(self, method: MethodSpec, seed: int, lr: float | None, marker: Path) -> list[Point]:
        """Make a run again. What came from the old run goes first: its test reports (a curve holds
        one run's points), its folder, and last its points file; then the run is made, and at the
        tuning seed its validation score measured again (:meth:`_validate_again`). ``marker``
        (``remaking/``) says how far it got (``stage``: ``clearing`` until the old points file is
        gone, then ``running``) and goes only when all is done: a kill at any step continues there,
        and a refusal of the new score repeats at every rerun."""
        stage = json.loads(marker.read_text())["stage"]
        if stage == "running" and self.points_file(method, seed, lr).exists():
            made = self.points(method, seed, lr)
            if any(p.model != self.spec.model and not Path(p.model).exists() for p in made):
                stage = "clearing"  # the new run's models went too (work/ deleted before the rerun)
        if stage == "clearing":
            chosen = self.tuning.get(method.lr_from or method.name, {}).get("chosen_lr")
            if KINDS[method.kind].per_seed and (lr == chosen or not KINDS[method.kind].tuned):  # its test reports
                shutil.rmtree(self.report_folder(method, seed), ignore_errors=True)
            shutil.rmtree(self.folder(method, seed, lr), ignore_errors=True)
            configs_file(self.points_file(method, seed, lr)).unlink(missing_ok=True)
            self.points_file(method, seed, lr).unlink(missing_ok=True)
            write_json(marker, {**json.loads(marker.read_text()), "stage": "running"})
        points = self.points(method, seed, lr)
        if seed == self.spec.tuning_seed and self.validation_file(method, lr).exists():
            self._validate_again(method, lr, points)
        marker.unlink()
        return points

    def validation_file(self, method: MethodSpec, lr: float | None) -> Path:
        """The kept (committed) validation report of a tuning run."""
        return self.out / "tuning" / method.name / f"{self.folder(method, self.spec.tuning_seed, lr).name}.json"

    def prune(self, method: MethodSpec, seed: int, lr: float | None) -> None:
        """Delete a finished run's models and checkpoints (its reports and logs stay)."""
        folder = self.folder(method, seed, lr)
        for sub in ("train/model", "train/checkpoints", "rl/model", "rl/snapshots", "rl/checkpoints"):
            shutil.rmtree(folder / sub, ignore_errors=True)

    def evaluate(self, point: Point, split: str, folder: Path) -> dict:
        """Greedy T-turn evaluation of a point on ``split`` (the same problems for every point)."""
        from drift.evaluate import run_eval

        if not (folder / "report.json").exists():
            if not Path(point.model).exists() and point.model != self.spec.model:
                raise ModelGone(f"{point.model} is gone and {folder / 'report.json'} was never written")
            run_eval(
                C.EvalConfig(
                    **{**self.spec.shared(), "model": point.model},
                    split=split,
                    num_prompts=self.spec.test_prompts if split == "test" else self.spec.validation_prompts,
                    seed=0,
                    out=str(folder),
                    resume=True,
                )
            )
        return json.loads((folder / "report.json").read_text())

    # -- tuning ----------------------------------------------------------------------------

    def lr(self, method: MethodSpec) -> float | None:
        """The method's learning rate: none for base, its source's for ``lr_from``, else tuned."""
        if not KINDS[method.kind].tuned:
            return None
        source = self.spec.method(method.lr_from) if method.lr_from else method
        if source.name not in self.tuning:
            self.tune(source)
        self._check_choice(source.name)
        return self.tuning[source.name]["chosen_lr"]

    def tune(self, method: MethodSpec) -> None:
        """One run per learning rate of the grid at the tuning seed, scored on the validation split."""
        seed, turns = self.spec.tuning_seed, str(self.spec.max_turns)
        scores = {}
        for lr in self.spec.lr_grid:
            kept = self.validation_file(method, lr)
            if not kept.exists():
                where = self.folder(method, seed, lr) / "eval" / "validation"
                report = self.with_models(method, seed, lr, partial(self._validate, where=where))
                write_json(kept, report)
            scores[f"{lr:g}"] = json.loads(kept.read_text())["cumulative_accuracy"][turns]
        best = self._best(scores)
        self.tuning[method.name] = {
            "validation_multi_at_T": scores,
            "chosen_lr": best,
            "tries": len(self.spec.lr_grid),
            "seed": seed,
            "split": "validation",
            "prompts": self.spec.validation_prompts,
        }
        write_json(self.out / "tuning.json", self.tuning)
        log(f"{method.name}: lr {best:g} chosen on validation ({scores})")
        for lr in self.spec.lr_grid:
            if lr != best:
                self.prune(method, seed, lr)

    def _best(self, scores: dict) -> float:
        """The grid's learning rate with the best validation multi@T (ties: the earlier in the grid)."""
        return max(self.spec.lr_grid, key=lambda lr: (scores[f"{lr:g}"], -self.spec.lr_grid.index(lr)))

    def _validate(self, points: list[Point], where: Path) -> dict:
        return self.evaluate(points[-1], "validation", where)

    def _validate_again(self, method: MethodSpec, lr: float | None, points: list[Point]) -> None:
        """A tuning run made again: its validation report and score are the new run's."""
        report = self._validate(points, self.folder(method, self.spec.tuning_seed, lr) / "eval" / "validation")
        write_json(self.validation_file(method, lr), report)
        entry = self.tuning[method.name]
        entry["validation_multi_at_T"][f"{lr:g}"] = report["cumulative_accuracy"][str(self.spec.max_turns)]
        self._check_choice(method.name)
        write_json(self.out / "tuning.json", self.tuning)

    def _check_choice(self, name: str) -> None:
        """The chosen lr still wins on the kept validation reports (a tuning run made again may score
        otherwise). Should it not, every seed's run would be of the wrong lr: an error, not a silent
        change, at every rerun until it is resolved."""
        entry, method = self.tuning[name], self.spec.method(name)
        scores = dict(entry["validation_multi_at_T"])
        for lr in self.spec.lr_grid:
            if (kept := self.validation_file(method, lr)).exists():
                scores[f"{lr:g}"] = json.loads(kept.read_text())["cumulative_accuracy"][str(self.spec.max_turns)]
        best = self._best(scores)
        if best != entry["chosen_lr"]:
            names = [name] + [m.name for m in self.spec.method_specs() if m.lr_from == name]
            reports = ", ".join(str(self.out / "reports" / n) for n in names)
            raise DriftError(
                f"{name}: the kept validation scores ({self.out / 'tuning' / name}) are now {scores} (a tuning run "
                f"was made again, its models gone, and scored otherwise), so lr {best:g} would now win over the "
                f"chosen {entry['chosen_lr']:g}, at which the runs of {', '.join(names)} were made. Start the study "
                "in a new --out, or choose again here: "
                f"delete {self.out / 'remaking' / name}, {reports} and the {name!r} entry of "
                f"{self.out / 'tuning.json'}, then run the same command"
            )

    # -- the test points -------------------------------------------------------------------

    def report_folder(self, method: MethodSpec, seed: int | None) -> Path:
        """The test reports of ``method``'s run at ``seed`` (of its one run, if not run per seed)."""
        if not KINDS[method.kind].per_seed:
            return self.out / "reports" / method.name
        return self.out / "reports" / method.name / f"seed-{seed}"

    def report_path(self, method: MethodSpec, seed: int | None, point: Point) -> Path:
        if not KINDS[method.kind].per_seed:
            return self.report_folder(method, seed) / "report.json"
        return self.report_folder(method, seed) / _tag(point) / "report.json"

    def test_points(self, method: MethodSpec, seed: int) -> list[Path]:
        """Every point of ``method`` at ``seed`` evaluated on the test split; the reports' paths."""
        lr = self.lr(method)
        paths = self.with_models(method, seed, lr, lambda points: self._test_reports(method, seed, lr, points))
        if KINDS[method.kind].tuned:  # (an untuned kind's model is not the run's own: the reference)
            self.prune(method, seed, lr)
        return paths

    def _test_reports(self, method: MethodSpec, seed: int, lr: float | None, points: list[Point]) -> list[Path]:
        owner = {"method": method.name, "seed": seed if KINDS[method.kind].per_seed else None, "lr": lr}
        expected = {
            self.report_path(method, seed, p): {**owner, "round": p.round, "compute": p.compute} for p in points
        }
        run = f"{method.name}'s run at seed {seed}, lr {lr} ({self.points_file(method, seed, lr)})"
        check_kept_reports(self.report_folder(method, seed), expected, run)
        paths = []
        for point in points:
            path = self.report_path(method, seed, point)
            if not path.exists():
                eval_dir = self.folder(method, seed, lr) / "eval" / f"test-{_tag(point)}"
                report = self.evaluate(point, "test", eval_dir)
                report["study"] = {
                    "method": method.name,
                    "kind": method.kind,
                    "seed": seed if KINDS[method.kind].per_seed else None,
                    "lr": lr,
                    "lr_from": method.lr_from,
                    "round": point.round,
                    "final": point is points[-1],  # the run's end (a run still going has none yet)
                    "compute": point.compute,
                    "parameters": self.parameters(),
                    "code": point.code,  # the run's
                    "eval_code": self.code,
                }
                write_json(path, report)
            paths.append(path)
        return paths


def ordered(spec: StudySpec) -> list[MethodSpec]:
    """Base first, then the method that sets the online budgets, then the others in file order."""
    return sorted(
        spec.method_specs(),
        key=lambda m: 0 if not KINDS[m.kind].per_seed else (1 if m.name == spec.budget_method else 2),
    )


def run_study(cfg) -> dict:
    """``drift study``: run (or with ``--dry-run`` only plan) the study; return the table."""
    from drift.study.plan import print_plan
    from drift.study.results import write_results

    if not cfg.study:
        raise DriftError("no study file given (drift study CONFIG.yaml --out DIR)")
    spec = load_spec(cfg.study)
    out = Path(cfg.out or Path("runs") / "study" / spec.name)
    check_same_study(out / "study.yaml", spec)  # a plan or a table of another study would be wrong too
    if cfg.dry_run:
        return print_plan(spec, out)
    if cfg.table_only:
        if not (out / "reports").exists():
            raise DriftError(f"{out} has no reports yet")
        return write_results(out, spec)
    out.mkdir(parents=True, exist_ok=True)
    write_study(out / "study.yaml", spec)
    study = Study(spec, out)
    start = time.perf_counter()
    # seed by seed: after the first pass (which also tunes), every method has one seed in the table
    for seed in [spec.tuning_seed] + [s for s in spec.seeds if s != spec.tuning_seed]:
        for method in ordered(spec):
            if KINDS[method.kind].per_seed or seed == spec.tuning_seed:
                study.test_points(method, seed)
        write_results(out, spec)
    log(f"all runs done ({time.perf_counter() - start:.0f} s this time)")
    return write_results(out, spec)
