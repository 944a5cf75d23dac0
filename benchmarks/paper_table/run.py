"""The shape of the paper's main table, measured on a 2-core CPU.

    python benchmarks/paper_table/run.py            # about an hour; re-running reuses finished stages

Methods (rows), all starting from the same reference policy and evaluated the same way:

- Base        SmolLM2-135M-Instruct after the format warm-up of `drift demo` (its own answers,
              wrapped in <answer> tags; no gold answers). The reference policy of every row.
- SFT         single-turn SFT on the gold answers of the training problems ("<answer>gold</answer>").
- RFT         5-turn rollouts, trajectories that end correct, weight 1 (scheme rft).
- DRIFT-1     1-turn rollouts (K per prompt), DRIFT weights, groups with no success dropped.
- DRIFT-5     5-turn rollouts, DRIFT weights, groups with no success dropped (the paper's method).
- DRIFT-5-keep  as DRIFT-5 but all-fail groups kept (the reference code's behaviour).
- Online RL   `drift rl` (group-relative policy gradient on fresh samples every round), given at
              least the sampling and training budget of DRIFT-5.

Evaluation: 500 held-out arithmetic problems (2-digit addition), greedy, up to 5 turns with
"Incorrect. Please think again.", lenient answer parsing; multi@k with Wilson 95% intervals.
Outputs: results/<method>/report.json, results/table.md, results/*.png; scratch in work/.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from drift import config as C
from drift.compare import run_compare
from drift.demo import PRESETS, format_warmup
from drift.evaluate import run_eval
from drift.records import write_records
from drift.rl import run_rl
from drift.rollout import run_rollout
from drift.train import run_train
from drift.weight import run_weight

HERE = Path(__file__).resolve().parent
WORK, RESULTS = HERE / "work", HERE / "results"
SEED = 0
EVAL_PROMPTS = 500
PRESET = {**PRESETS["full"], "warmup_prompts": 128}
SHARED = dict(
    model=PRESET["model"],
    task="arithmetic",
    task_options=PRESET["task_options"],
    max_turns=5,
    answer_mode="lenient",
    max_new_tokens=PRESET["max_new_tokens"],
    seed=SEED,
)
RL_ROUNDS = 10  # 10 rounds x 8 prompts x 8 trajectories = 640 >= DRIFT-5's 512 trajectories


def log(msg: str) -> None:
    print(f"\n[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def once(marker: Path, fn):
    if marker.exists():
        log(f"reusing {marker.relative_to(HERE)}")
        return
    fn()


def rollouts(name: str, model: str, max_turns: int) -> dict:
    cfg = C.RolloutConfig(
        **{**SHARED, "max_turns": max_turns, "model": model},
        num_prompts=PRESET["train_prompts"],
        split="train",
        n=PRESET["k"],
        temperature=1.0,
        out=str(WORK / f"{name}.jsonl"),
        resume=True,
    )
    once(WORK / f"{name}.summary.json", lambda: (log(f"rollouts {name}"), run_rollout(cfg)))
    return json.loads((WORK / f"{name}.summary.json").read_text())


def train(name: str, data: Path, model: str) -> dict:
    cfg = C.TrainConfig(
        input=str(data),
        out=str(WORK / name),
        model=model,
        epochs=PRESET["epochs"],
        lr=PRESET["lr"],
        batch_size=PRESET["batch_size"],
        micro_batch_size=PRESET["micro_batch_size"],
        warmup_ratio=0.1,
        seed=SEED,
        save_steps=10,
        resume=True,
    )
    once(WORK / name / "train_summary.json", lambda: (log(f"train {name}"), run_train(cfg)))
    return json.loads((WORK / name / "train_summary.json").read_text())


def weigh(name: str, rollout_file: Path, **options) -> Path:
    out = WORK / f"{name}.weighted.jsonl"
    cfg = C.WeightConfig(input=str(rollout_file), out=str(out), **options)
    once(out, lambda: (log(f"weights {name}"), run_weight(cfg)))
    return out


def gold_sft_data() -> Path:
    """One example per training problem: the instruction, and the gold answer in the requested format."""
    from drift.env import make_env
    from drift.prompts import ANSWER_FORMAT
    from drift.tasks import get_task, load_problems

    out = WORK / "sft-gold.jsonl"
    if not out.exists():
        spec, records = get_task("arithmetic"), []
        for ex in load_problems(
            "arithmetic", split="train", limit=PRESET["train_prompts"], seed=SEED, **PRESET["task_options"]
        ):
            env = make_env(spec, max_turns=1)
            env.reset(ex)
            env.step(ANSWER_FORMAT.format(answer=ex.gold))
            records.append({**env.record(traj_id=0), "weight": 1.0})
        write_records(out, records)
    return out


def evaluate(name: str, model: str, compute: dict) -> dict:
    cfg = C.EvalConfig(
        **{**SHARED, "model": model},
        num_prompts=EVAL_PROMPTS,
        split="test",
        out=str(WORK / f"eval-{name}"),
        resume=True,
    )
    once(WORK / f"eval-{name}" / "report.json", lambda: (log(f"evaluate {name}"), run_eval(cfg)))
    report = json.loads((WORK / f"eval-{name}" / "report.json").read_text())
    report["compute"] = compute
    (RESULTS / name).mkdir(parents=True, exist_ok=True)
    (RESULTS / name / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def cost(roll: dict | None = None, tr: dict | None = None) -> dict:
    """Compute spent by a method: sampling + training, measured."""
    c = {
        "rollout_seconds": roll["wall_seconds"] if roll else 0.0,
        "generated_tokens": roll["tokens_generated"] if roll else 0,
        "train_seconds": tr["wall_seconds"] if tr else 0.0,
        "trained_tokens": tr["tokens"] if tr else 0,
    }
    c["total_seconds"] = round(c["rollout_seconds"] + c["train_seconds"], 1)
    return c


def main() -> None:
    start = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    ref = format_warmup(WORK, SHARED, PRESET, SEED, timings)
    five = rollouts("rollouts-5turn", ref, max_turns=5)
    one = rollouts("rollouts-1turn", ref, max_turns=1)
    rows = {"Base": cost()}
    rows["SFT"] = cost(tr=train("sft", gold_sft_data(), ref))
    rows["RFT"] = cost(five, train("rft", weigh("rft", WORK / "rollouts-5turn.jsonl", scheme="rft"), ref))
    rows["DRIFT-1"] = cost(one, train("drift-1", weigh("drift-1", WORK / "rollouts-1turn.jsonl", all_fail="drop"), ref))
    rows["DRIFT-5"] = cost(
        five, train("drift-5", weigh("drift-5", WORK / "rollouts-5turn.jsonl", all_fail="drop"), ref)
    )
    rows["DRIFT-5-keep"] = cost(five, train("drift-5-keep", weigh("drift-5-keep", WORK / "rollouts-5turn.jsonl"), ref))
    rl_cfg = C.RLConfig(
        **{**SHARED, "model": ref},
        out=str(WORK / "rl"),
        algorithm="grpo",
        steps=RL_ROUNDS,
        prompts_per_step=8,
        group_size=PRESET["k"],
        num_prompts=PRESET["train_prompts"],
        split="train",
        temperature=1.0,
        lr=PRESET["lr"],
        micro_batch_size=PRESET["micro_batch_size"],
        lr_scheduler="constant_with_warmup",
        warmup_ratio=0.0,  # as when the table was measured
        save_steps=2,
        resume=True,
    )
    once(WORK / "rl" / "rl_summary.json", lambda: (log("online RL"), run_rl(rl_cfg)))
    rl = json.loads((WORK / "rl" / "rl_summary.json").read_text())
    rows["Online RL"] = {
        "rollout_seconds": rl["generation_seconds"],
        "generated_tokens": rl["generated_tokens"],
        "train_seconds": rl["training_seconds"],
        "trained_tokens": rl["trained_tokens"],
        "total_seconds": round(rl["generation_seconds"] + rl["training_seconds"], 1),
    }
    models = {
        "Base": ref,
        "SFT": WORK / "sft" / "model",
        "RFT": WORK / "rft" / "model",
        "DRIFT-1": WORK / "drift-1" / "model",
        "DRIFT-5": WORK / "drift-5" / "model",
        "DRIFT-5-keep": WORK / "drift-5-keep" / "model",
        "Online RL": WORK / "rl" / "model",
    }
    for name, model in models.items():
        evaluate(name, str(model), rows[name])
    log("comparison")
    comparison = run_compare(
        C.CompareConfig(reports=[str(RESULTS / n) for n in models], names=list(models), out=str(RESULTS))
    )
    write_table(comparison, time.perf_counter() - start)


def write_table(comparison: dict, wall: float) -> None:
    lines = [
        "| method | multi@1 | multi@2 | multi@3 | multi@4 | multi@5 | 95% CI multi@5 | correction rate | "
        "unique ratio | sampling s | training s | generated tokens | trained tokens |",
        "|---|" + "---|" * 12,
    ]
    for name in [r["name"] for r in comparison["runs"]]:
        rep = json.loads((RESULTS / name / "report.json").read_text())
        acc, ci, c = rep["cumulative_accuracy"], rep["cumulative_accuracy_ci"]["5"], rep["compute"]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{acc[str(k)]:.3f}" for k in range(1, 6))
            + f" | [{ci[0]:.3f}, {ci[1]:.3f}] | {rep['correction_rate_overall'] or 0:.3f} | "
            f"{rep['unique_answer_ratio'] or 0:.3f} | {c['rollout_seconds']:.0f} | {c['train_seconds']:.0f} | "
            f"{c['generated_tokens']} | {c['trained_tokens']} |"
        )
    lines.append(f"\nTotal wall time of this run: {wall / 60:.1f} min.")
    (RESULTS / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if "--fresh" in sys.argv:
        shutil.rmtree(WORK, ignore_errors=True)
        shutil.rmtree(RESULTS, ignore_errors=True)
    main()
