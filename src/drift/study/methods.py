"""How each kind of method turns the reference policy into models to evaluate, and what it spent.

``KINDS`` maps a method's ``kind`` to a :class:`Kind`, whose ``run(study, method, seed, lr, folder) -> [Point]`` gives
the models to evaluate (one for an offline method, several along an online run) with the compute
spent to reach each. Every stage it calls writes into ``folder`` and is skipped when its output is
already there, so a killed study continues where it stopped.

Compute of a point (drift.compute): the tokens the method ran through the model to get there, and
their FLOP estimates, nominal (``flops``) and as run (``flops_as_run``; ``None`` where the run's
summary kept no count of the tokens forwarded, as drift's did not before December 2026). An offline
method pays for its own rollouts in full (RFT and DRIFT on the same rollouts are each charged them:
that is what either would cost alone). The reference policy's format warm-up is shared by every
method, the base row included, and is charged to none; evaluation is the same for every point and is
charged to none.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drift import config as C
from drift.compute import SHARED, flops_as_run, flops_of, known_counts
from drift.study.spec import MethodSpec

ZERO = {
    "prefilled_tokens": 0,
    "generated_tokens": 0,
    "scored_tokens": 0,
    "reference_tokens": 0,
    "trained_tokens": 0,
    "sampling_seconds": 0.0,
    "training_seconds": 0.0,
}


@dataclass
class Point:
    """A model to evaluate, the round of the online run it was saved at (none: the end of the run),
    and the compute spent to reach it (the fields of ``ZERO``, the ``*_forwarded_tokens`` its run
    kept, ``flops`` and ``flops_as_run``)."""

    model: str
    round: int | None
    compute: dict
    code: dict | None = None  # the code that made it (drift.study.resume.code_version); none in older files


def with_flops(parameters: int, compute: dict) -> dict:
    out = {**ZERO, **compute}
    out["flops"] = flops_of(parameters, out)
    out["flops_as_run"] = flops_as_run(parameters, out)
    return out


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def run_base(study, method: MethodSpec, seed: int, lr, folder: Path) -> list[Point]:
    return [Point(study.reference(), None, with_flops(study.parameters(), {}))]


def _train(study, method: MethodSpec, seed: int, lr: float, data: Path, folder: Path) -> dict:
    from drift.train import run_train

    out = folder / "train"
    if not (out / "train_summary.json").exists():
        options = {**study.spec.train, **method.train}
        run_train(
            C.TrainConfig(
                **options,
                input=str(data),
                out=str(out),
                model=study.reference(),
                lr=lr,
                seed=seed,
                dtype=study.spec.dtype,
                resume=True,
            )
        )
    return _read(out / "train_summary.json")


def gold_answers(study, seed: int, path: Path) -> Path:
    """One example per training problem: its question, and the gold answer in the requested format."""
    from drift.env import make_env
    from drift.prompts import ANSWER_FORMAT
    from drift.records import write_records
    from drift.tasks import get_task, load_problems

    if path.exists():
        return path
    spec = get_task(study.spec.task)
    records = []
    problems = load_problems(
        study.spec.task, split="train", limit=study.spec.train_prompts, seed=seed, **study.spec.task_options
    )
    for problem in problems:
        env = make_env(spec, max_turns=1)
        env.reset(problem)
        env.step(ANSWER_FORMAT.format(answer=problem.gold))
        records.append({**env.record(traj_id=0), "weight": 1.0})
    write_records(path, records)
    return path


def run_sft(study, method: MethodSpec, seed: int, lr: float, folder: Path) -> list[Point]:
    data = gold_answers(study, seed, study.work / "data" / f"gold-seed{seed}.jsonl")
    summary = _train(study, method, seed, lr, data, folder)
    compute = {**_trained(summary), "training_seconds": summary["wall_seconds"]}
    return [Point(str(folder / "train" / "model"), None, with_flops(study.parameters(), compute))]


def run_offline(study, method: MethodSpec, seed: int, lr: float, folder: Path) -> list[Point]:
    from drift.weight import run_weight

    rollouts, rolled = study.rollouts(seed, method.turns or study.spec.max_turns)
    weighted = folder / "weighted.jsonl"
    if not weighted.exists():
        run_weight(C.WeightConfig(**method.weight, input=str(rollouts), out=str(weighted)))
    summary = _train(study, method, seed, lr, weighted, folder)
    compute = {
        "prefilled_tokens": rolled["tokens_prefilled"],
        "generated_tokens": rolled["tokens_generated"],
        "sampling_seconds": rolled["wall_seconds"],
        **_trained(summary),
        "training_seconds": summary["wall_seconds"],
    }
    return [Point(str(folder / "train" / "model"), None, with_flops(study.parameters(), compute))]


def _trained(summary: dict) -> dict:
    """drift train's counts: every token of the examples forwarded, and those run (older summaries: unknown)."""
    return {"trained_tokens": summary["tokens"], "trained_forwarded_tokens": summary.get("forwarded_tokens")}


def _rl_compute(entry: dict) -> dict:
    counts = known_counts(entry)  # an older drift rl's log names or lacks the forwarded counts
    return {
        **{k: counts.get(k, 0) for k in ZERO if k.endswith("_tokens")},
        **{f"{k}_forwarded_tokens": counts[f"{k}_forwarded_tokens"] for k in SHARED},
        "sampling_seconds": entry["generation_seconds"],
        "training_seconds": entry["training_seconds"],
    }


def run_online(study, method: MethodSpec, seed: int, lr: float, folder: Path) -> list[Point]:
    """``drift rl`` until ``budget_multiple`` x the budget method's FLOPs at this seed (or
    ``max_rounds``), with snapshots at ``snapshot_rounds``: one point per snapshot, and the end."""
    from drift.rl import run_rl

    spec, out = study.spec, folder / "rl"
    if not (out / "rl_summary.json").exists():
        options = {**spec.rl, **method.rl}
        if options.get("algorithm") == "trl-grpo" and out.exists():
            shutil.rmtree(out)  # TRL's runs keep no checkpoints: an interrupted one starts over
        run_rl(
            C.RLConfig(
                **{
                    **spec.shared(),
                    **spec.rl,
                    **method.rl,
                    "model": study.reference(),
                    "max_turns": method.turns or spec.max_turns,
                    "temperature": spec.rollout_temperature,
                },
                out=str(out),
                lr=lr,
                seed=seed,
                split="train",
                num_prompts=spec.train_prompts,
                steps=spec.max_rounds,
                max_flops=spec.budget_multiple * study.budget(seed),
                snapshot_steps=[r for r in spec.snapshot_rounds if r < spec.max_rounds],
                resume=True,
            )
        )
    summary = _read(out / "rl_summary.json")
    log = {e["step"]: e for e in map(json.loads, (out / "rl_log.jsonl").read_text().splitlines())}
    points = [
        Point(str(out / "snapshots" / f"round-{r:05d}"), r, with_flops(study.parameters(), _rl_compute(log[r])))
        for r in spec.snapshot_rounds
        if r < summary["steps"] and (out / "snapshots" / f"round-{r:05d}").exists()
    ]  # (a round added to snapshot_rounds after the run had passed it has no snapshot)
    last = log[summary["steps"]]
    points.append(Point(str(out / "model"), summary["steps"], with_flops(study.parameters(), _rl_compute(last))))
    return points


@dataclass(frozen=True)
class Kind:
    """A kind of method: how it runs, whether its learning rate is tuned, and whether it runs per
    seed (base is one deterministic model: evaluated once)."""

    run: Callable[..., list[Point]]
    tuned: bool = True
    per_seed: bool = True


KINDS = {
    "base": Kind(run_base, tuned=False, per_seed=False),
    "sft": Kind(run_sft),
    "offline": Kind(run_offline),
    "online": Kind(run_online),
}
