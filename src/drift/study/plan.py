"""``drift study --dry-run``: the units of work a study will run, what is done, and a time estimate.

The estimate is a plan, not a promise. A kind of unit the study has already finished is estimated
by the mean wall seconds of its finished units (rollout summaries, the runs' ``points/``, the
evaluation reports). A kind not yet measured gets an upper bound: token counts from the study
file (every episode using all its turns and ``max_new_tokens`` per reply) at ``DEFAULT_RATES``
tokens per second, measured on a 2-core CPU (AMD EPYC, AVX512, bfloat16) with SmolLM2-135M (a
GPU is far faster); an online run not yet measured is ``budget_multiple`` times the budget
method's rollouts and run.
"""

from __future__ import annotations

import json
from pathlib import Path

from drift.study.provenance import is_points_file
from drift.study.spec import StudySpec

DEFAULT_RATES = {"generated_per_second": 140.0, "trained_per_second": 400.0}
PROMPT_TOKENS = 60  # system prompt + question, chat-templated (SmolLM2 on arithmetic: ~50-70)
FEEDBACK_TOKENS = 20  # "Incorrect. Please think again." with its chat markup
SNAPSHOTS_BELOW_BUDGET = 5  # an online run's snapshot rounds reached before its budget (rounds 1..16 at 4x)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _points_files(folder: Path, pattern: str) -> list[Path]:
    """The runs' points files under ``folder`` (not the resolved configs beside them)."""
    return [p for p in folder.glob(pattern) if is_points_file(p)] if folder.exists() else []


def measured_seconds(spec: StudySpec, out: Path) -> dict[str, float]:
    """Mean wall seconds of every kind of unit the study has finished."""
    work, kinds = out / "work", {m.name: m.kind for m in spec.method_specs()}
    runs: dict[str, list[float]] = {"sft run": [], "offline run": [], "online run": []}
    for path in _points_files(out / "points", "*/*.json"):
        kind = kinds.get(path.parent.name)
        if kind in ("sft", "offline", "online"):
            c = json.loads(path.read_text())[-1]["compute"]  # an offline run's sampling is its rollouts' unit
            runs[f"{kind} run"].append(c["training_seconds"] + (c["sampling_seconds"] if kind == "online" else 0.0))

    def walls(paths) -> list[float]:
        return [json.loads(p.read_text())["wall_seconds"] for p in paths]

    found = {
        **runs,
        "rollouts": walls(work.glob("rollouts/*.summary.json")) if work.exists() else [],
        "test eval": walls((out / "reports").rglob("report.json")) if (out / "reports").exists() else [],
        "validation eval": walls((out / "tuning").glob("*/*.json")) if (out / "tuning").exists() else [],
    }
    return {unit: mean for unit, values in found.items() if (mean := _mean(values)) is not None}


def unit_seconds(spec: StudySpec, measured: dict[str, float]) -> dict[str, float]:
    """Estimated seconds of each kind of unit: measured where it can be, else an upper bound."""
    T, L = spec.max_turns, spec.max_new_tokens
    gen, tr = DEFAULT_RATES["generated_per_second"], DEFAULT_RATES["trained_per_second"]
    epochs = float(spec.train.get("epochs", 1.0))
    history = PROMPT_TOKENS + T * (L + FEEDBACK_TOKENS)  # the longest trained example
    bound = {
        "warm-up": spec.warmup_prompts * L / gen + spec.warmup_prompts * 2 * (PROMPT_TOKENS + L) / tr,
        "test eval": spec.test_prompts * T * L / gen,
        "validation eval": spec.validation_prompts * T * L / gen,
        "rollouts": spec.train_prompts * spec.k * T * L / gen,
        "sft run": spec.train_prompts * epochs * (PROMPT_TOKENS + L) / tr,
        "offline run": spec.train_prompts * spec.k * epochs * history / tr,
    }
    est = {**bound, **measured}
    est.setdefault("online run", spec.budget_multiple * (est["rollouts"] + est["offline run"]))
    return est


def snapshots_per_run(spec: StudySpec, out: Path) -> float:
    """Snapshot rounds an online run passes before its budget ends it: as many as the finished
    online runs passed (of today's ``snapshot_rounds``), else a guess."""
    online = {m.name for m in spec.method_specs() if m.kind == "online"}
    files = [p for p in _points_files(out / "points", "*/*.json") if p.parent.name in online]
    ends = [json.loads(p.read_text())[-1]["round"] for p in files]
    rounds = [r for r in spec.snapshot_rounds if r < spec.max_rounds]
    if not ends:
        return min(len(rounds), SNAPSHOTS_BELOW_BUDGET)
    return sum(len([r for r in rounds if r < end]) for end in ends) / len(ends)


def plan(spec: StudySpec, out: Path) -> list[tuple[str, int, int]]:
    """``(unit, how many in all, how many done)`` for every kind of unit."""
    methods = spec.method_specs()
    tuned = [m for m in methods if m.kind != "base" and not m.lr_from]
    runs = {"sft": 0, "offline": 0, "online": 0}
    test_evals: float = 0
    validation_evals = 0
    for m in methods:
        if m.kind == "base":
            test_evals += 1
            continue
        extra = len(spec.lr_grid) - 1 if m in tuned else 0  # the tuning seed's chosen run is a seed run
        runs[m.kind] += len(spec.seeds) + extra
        validation_evals += len(spec.lr_grid) if m in tuned else 0
        per_run = 1 if m.kind != "online" else snapshots_per_run(spec, out) + 1  # + the run's end
        test_evals += len(spec.seeds) * per_run
    work = out / "work"

    def runs_left(m, seed: int) -> bool:
        made = len(_points_files(out / "points" / m.name, f"seed{seed}-*.json"))
        return made < (len(spec.lr_grid) if m in tuned and seed == spec.tuning_seed else 1)

    rollouts = {(s, m.turns or spec.max_turns) for m in methods if m.kind == "offline" for s in spec.seeds}
    rolled = [  # sampled, or no longer needed: every run on them is done
        (work / "rollouts" / f"seed{s}-turns{t}.summary.json").exists()
        or not any(runs_left(m, s) for m in methods if m.kind == "offline" and (m.turns or spec.max_turns) == t)
        for s, t in rollouts
    ]
    done_runs = {
        kind: sum(len(_points_files(out / "points" / m.name, "*.json")) for m in methods if m.kind == kind)
        for kind in runs
    }
    reports = len(list((out / "reports").rglob("report.json"))) if (out / "reports").exists() else 0
    warmup = work / "reference" / "warmup"  # done as drift.demo.format_warmup sees it: a model, or nothing to train
    warmed = (warmup / "train" / "model" / "config.json").exists() or (
        (warmup / "format.jsonl").exists() and not (warmup / "format.jsonl").read_bytes().strip()
    )
    return [
        ("warm-up", 1 if spec.warmup_prompts else 0, int(warmed)),
        ("rollouts", len(rollouts), sum(rolled)),
        ("sft run", runs["sft"], done_runs["sft"]),
        ("offline run", runs["offline"], done_runs["offline"]),
        ("online run", runs["online"], done_runs["online"]),
        (
            "validation eval",
            validation_evals,
            len(list((out / "tuning").glob("*/*.json"))) if (out / "tuning").exists() else 0,
        ),
        ("test eval", round(test_evals), reports),
    ]


def print_plan(spec: StudySpec, out: Path) -> dict:
    """Print the plan and its estimated time; return both."""
    measured = measured_seconds(spec, out)
    seconds = unit_seconds(spec, measured)
    rows, total = [], 0.0
    for unit, count, done in plan(spec, out):
        left = max(0, count - done)
        rows.append(
            {
                "unit": unit,
                "count": count,
                "done": min(done, count),
                "seconds_each": round(seconds[unit]),
                "measured": unit in measured,
                "seconds_left": round(left * seconds[unit]),
            }
        )
        total += left * seconds[unit]
    shape = f"{len(spec.method_specs())} methods x {len(spec.seeds)} seeds, lr grid {spec.lr_grid}"
    print(f"study {spec.name}: {shape}, into {out}")
    print(f"{'unit':<16} {'count':>5} {'done':>5} {'~s each':>8} {'~s left':>8}  estimate from")
    for r in rows:
        source = "finished units" if r["measured"] else "upper bound"
        print(f"{r['unit']:<16} {r['count']:>5} {r['done']:>5} {r['seconds_each']:>8} {r['seconds_left']:>8}  {source}")
    print(f"estimated time left: {total / 3600:.1f} h on this machine")
    return {"units": rows, "estimated_seconds": round(total)}
