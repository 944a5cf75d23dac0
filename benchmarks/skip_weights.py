"""Benchmark: what ``drift train --skip-weight-share`` skips on demo-like weights, and the time saved.

    python benchmarks/skip_weights.py [--model smollm2-135m] [--steps 4] [--repeats 2] [--dtype auto]
                                      [--shares 1e-6 1e-4]

1. Synthesises a rollout shaped like the demo's (64 prompts x K=8 trajectories of up to 5 turns,
   2-digit answers, a weak model: a trajectory solves a turn with probability p drawn per prompt,
   and its wrong answers repeat), weights it with ``drift weight`` (beta 0.1, gamma 0.9,
   ``--all-fail drop``, the demo's recipe).
2. Prints the weight quantiles and, for several tolerances, the share of example-steps that
   :func:`drift.train.negligible` skips over two epochs of batches of 16 (no model involved).
3. Times ``drift train`` (batch 16, micro-batch 8, ``--steps`` steps) with skipping off and at
   each of ``--shares``, alternating them ``--repeats`` times; reports wall time, forwarded and
   trained tokens from each run's train_summary.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def trajectory(rng: random.Random, prompt: int, traj: int, p: float) -> dict:
    truth = str(10 + prompt % 90)
    wrong = [str(rng.randint(10, 198)) for _ in range(2)]  # a weak model cycles through a few wrong answers
    answers, correct = [], []
    for _ in range(5):
        ok = rng.random() < p
        answers.append(truth if ok else (rng.choice(wrong) if rng.random() > 0.1 else None))
        correct.append(ok)
        if ok:
            break
    msgs = [{"role": "system", "content": "You're a helpful assistant."}]
    msgs.append({"role": "user", "content": f"What is {prompt} + {truth}? Answer in <answer></answer>."})
    for t, a in enumerate(answers):
        if t:
            msgs.append({"role": "user", "content": "Incorrect. Please think again."})
        msgs.append({"role": "assistant", "content": f"<answer>{a}</answer>" if a is not None else "I think so"})
    return {
        "schema": 1,
        "prompt_id": f"p{prompt}",
        "traj_id": traj,
        "messages": msgs,
        "answers": answers,
        "correct": correct,
        "rewards": [float(c) for c in correct],
        "format_errors": answers.count(None),
        "first_correct_turn": correct.index(True) + 1 if any(correct) else None,
    }


def synthesise(path: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for prompt in range(64):
            p = rng.choice([0.0, 0.0, 0.02, 0.05, 0.1, 0.3])  # most prompts hard for a 135M model
            for traj in range(8):
                f.write(json.dumps(trajectory(rng, prompt, traj, p)) + "\n")


def skip_rates(weights: list[float], tolerances: list[float]) -> None:
    from drift.examples import plan_batches
    from drift.train import negligible

    print(f"{len(weights)} weighted trajectories; weight quantiles:")
    qs = statistics.quantiles(weights, n=10)
    print(f"  min {min(weights):.1e}  " + "  ".join(f"{q:.1e}" for q in qs) + f"  max {max(weights):.2f}")
    small = [sum(w < t for w in weights) for t in (1e-2, 1e-3, 1e-6)] + [weights.count(0.0)]
    print("  weights < 1e-2: {}, < 1e-3: {}, < 1e-6: {}, == 0: {}".format(*small))
    for tol in tolerances:
        skipped = seen = 0
        for epoch in range(2):
            for batch in plan_batches(len(weights), 16, seed=0, epoch=epoch):
                skipped += len(negligible([weights[i] for i in batch], tol))
                seen += len(batch)
        print(f"  skip_weight_share {tol:g}: {skipped}/{seen} example-steps skipped ({skipped / seen:.0%})")


def time_train(data: Path, model: str, steps: int, dtype: str, share: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "drift.cli", "train", str(data), "--model", model, "--out", str(out)]
    cmd += ["--max-steps", str(steps), "--batch-size", "16", "--micro-batch-size", "8", "--dtype", dtype]
    cmd += ["--skip-weight-share", share]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = json.loads((out / "train_summary.json").read_text())
    return {k: s[k] for k in ("wall_seconds", "tokens", "trained_tokens", "skipped_examples", "skipped_weight_share")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--shares", nargs="+", default=["1e-6", "1e-4"], help="tolerances to time besides none")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthesise(root / "rollouts.jsonl")
        subprocess.run(
            [sys.executable, "-m", "drift.cli", "weight", str(root / "rollouts.jsonl"), "--beta", "0.1"]
            + ["--gamma", "0.9", "--all-fail", "drop", "--no-plot", "--out", str(root / "weighted.jsonl")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        weights = [json.loads(line)["weight"] for line in open(root / "weighted.jsonl")]
        skip_rates(weights, [0.0, 1e-6, 1e-4, 1e-3, 1e-2])
        if args.steps <= 0:
            return
        runs: dict[str, list[dict]] = {share: [] for share in ["none", *args.shares]}
        for r in range(args.repeats):
            for share in runs:
                runs[share].append(
                    time_train(
                        root / "weighted.jsonl", args.model, args.steps, args.dtype, share, root / f"run-{share}-{r}"
                    )
                )
        for share, results in runs.items():
            walls = [x["wall_seconds"] for x in results]
            print(
                f"skip_weight_share {share}: wall {walls} s; "
                + json.dumps({k: v for k, v in results[0].items() if k != "wall_seconds"})
            )


if __name__ == "__main__":
    main()
