"""``drift study --dry-run``: the units of work a study will run, what is done, and a time estimate.

The estimate is deliberately rough (a plan, not a promise): token counts are upper bounds from the
study file (every episode using all its turns and ``max_new_tokens`` per reply), converted to
seconds at a rate of generated and trained tokens per second. The rates come from the study's own
finished runs when there are any (``work/runs/**/points.json``), else from ``DEFAULT_RATES``,
measured on a 2-core CPU (AMD EPYC, AVX512, bfloat16) with SmolLM2-135M; a GPU is far faster.
"""

from __future__ import annotations

import json
from pathlib import Path

from drift.study.spec import StudySpec

DEFAULT_RATES = {"generated_per_second": 140.0, "trained_per_second": 400.0}
PROMPT_TOKENS = 60  # system prompt + question, chat-templated (SmolLM2 on arithmetic: ~50-70)
FEEDBACK_TOKENS = 20  # "Incorrect. Please think again." with its chat markup


def measured_rates(out: Path) -> dict | None:
    """Generated and trained tokens per second over the study's finished runs (none: no run yet)."""
    sampled = trained = sampling_s = training_s = 0.0
    for path in (out / "work" / "runs").rglob("points.json") if (out / "work" / "runs").exists() else []:
        c = json.loads(path.read_text())[-1]["compute"]
        sampled += c["generated_tokens"]
        trained += c["trained_tokens"]
        sampling_s += c["sampling_seconds"]
        training_s += c["training_seconds"]
    if sampling_s <= 0 or training_s <= 0:
        return None
    return {"generated_per_second": sampled / sampling_s, "trained_per_second": trained / training_s}


def unit_seconds(spec: StudySpec, rates: dict) -> dict[str, float]:
    """Estimated seconds of each kind of unit (upper bounds on tokens, see the module notes)."""
    T, L, gen, tr = spec.max_turns, spec.max_new_tokens, rates["generated_per_second"], rates["trained_per_second"]
    epochs = float(spec.train.get("epochs", 1.0))
    history = PROMPT_TOKENS + T * (L + FEEDBACK_TOKENS)  # the longest trained example
    rollout = spec.train_prompts * spec.k * T * L / gen
    offline_train = spec.train_prompts * spec.k * epochs * history / tr
    return {
        "warm-up": spec.warmup_prompts * L / gen + spec.warmup_prompts * 2 * (PROMPT_TOKENS + L) / tr,
        "test eval": spec.test_prompts * T * L / gen,
        "validation eval": spec.validation_prompts * T * L / gen,
        "rollouts": rollout,
        "sft run": spec.train_prompts * epochs * (PROMPT_TOKENS + L) / tr,
        "offline run": offline_train,
        "online run": spec.budget_multiple * (rollout + offline_train),
    }


def plan(spec: StudySpec, out: Path) -> list[tuple[str, int, int]]:
    """``(unit, how many in all, how many done)`` for every kind of unit."""
    methods = spec.method_specs()
    tuned = [m for m in methods if m.kind != "base" and not m.lr_from]
    runs = {"sft": 0, "offline": 0, "online": 0}
    test_evals = validation_evals = 0
    for m in methods:
        if m.kind == "base":
            test_evals += 1
            continue
        extra = len(spec.lr_grid) - 1 if m in tuned else 0  # the tuning seed's chosen run is a seed run
        runs[m.kind] += len(spec.seeds) + extra
        validation_evals += len(spec.lr_grid) if m in tuned else 0
        rounds = [r for r in spec.snapshot_rounds if r < spec.max_rounds]
        per_run = 1 if m.kind != "online" else min(len(rounds), 5) + 1  # online: snapshots below the budget
        test_evals += len(spec.seeds) * per_run
    rollouts = {(s, m.turns or spec.max_turns) for m in methods if m.kind == "offline" for s in spec.seeds}
    work = out / "work"
    done_runs = {
        kind: sum(len(list((work / "runs" / m.name).glob("*/points.json"))) for m in methods if m.kind == kind)
        for kind in runs
    }
    reports = len(list((out / "reports").rglob("report.json"))) if (out / "reports").exists() else 0
    return [
        ("warm-up", 1 if spec.warmup_prompts else 0, int((work / "reference" / "warmup" / "train").exists())),
        ("rollouts", len(rollouts), len(list((work / "rollouts").glob("*.summary.json"))) if work.exists() else 0),
        ("sft run", runs["sft"], done_runs["sft"]),
        ("offline run", runs["offline"], done_runs["offline"]),
        ("online run", runs["online"], done_runs["online"]),
        (
            "validation eval",
            validation_evals,
            len(list((work / "runs").rglob("validation/report.json"))) if work.exists() else 0,
        ),
        ("test eval", test_evals, reports),
    ]


def print_plan(spec: StudySpec, out: Path) -> dict:
    """Print the plan and its estimated time; return both."""
    measured = measured_rates(out)
    rates = measured or DEFAULT_RATES
    seconds = unit_seconds(spec, rates)
    rows, total = [], 0.0
    for unit, count, done in plan(spec, out):
        left = max(0, count - done)
        rows.append(
            {
                "unit": unit,
                "count": count,
                "done": min(done, count),
                "seconds_each": round(seconds[unit]),
                "seconds_left": round(left * seconds[unit]),
            }
        )
        total += left * seconds[unit]
    source = "this study's finished runs" if measured else "drift.study.plan.DEFAULT_RATES (a 2-core CPU)"
    shape = f"{len(spec.method_specs())} methods x {len(spec.seeds)} seeds, lr grid {spec.lr_grid}"
    print(f"study {spec.name}: {shape}, into {out}")
    print(f"{'unit':<16} {'count':>5} {'done':>5} {'~s each':>8} {'~s left':>8}")
    for r in rows:
        print(f"{r['unit']:<16} {r['count']:>5} {r['done']:>5} {r['seconds_each']:>8} {r['seconds_left']:>8}")
    speed = f"{rates['generated_per_second']:.0f} generated, {rates['trained_per_second']:.0f} trained tokens/s"
    print(f"estimated time left: {total / 3600:.1f} h (upper bound; rates from {source}: {speed})")
    return {"units": rows, "estimated_seconds": round(total), "rates": rates, "rates_from": source}
