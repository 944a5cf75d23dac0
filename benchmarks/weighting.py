"""Benchmark: weight 1,000,000 trajectories (16 per prompt) from JSONL to JSONL.

    python benchmarks/weighting.py [--n 1000000] [--dir /tmp/drift-bench]

Reports: writing the synthetic input; `drift weight` end to end (read + validate + weight +
write + diagnostics, in a fresh process, best of --repeat); its stages (reading the numbers,
the math on them, writing); and `compute_weights` on a million in-memory record dicts, which
first gathers their numbers into columns.
Targets (issue #2): end to end < 10 s, math < 1 s, on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

from drift.config import WeightingOptions
from drift.diagnostics import diagnostics
from drift.records import paused_gc, read_records, write_records, write_spliced
from drift.weight import read_columns
from drift.weighting import compute_weights


def synthetic(n: int, k: int = 16, seed: int = 0):
    rnd = random.Random(seed)
    for i in range(n):
        turns = rnd.randint(1, 5)
        first = turns if rnd.random() < 0.4 else None
        answers = [str(rnd.randint(0, 200)) if rnd.random() > 0.05 else None for _ in range(turns)]
        msgs = [
            {"role": "system", "content": "You're a helpful assistant."},
            {"role": "user", "content": f"What is {i % 97}+{i % 89}?"},
        ]
        for t, a in enumerate(answers):
            if t:
                msgs.append({"role": "user", "content": "Incorrect. Please think again."})
            msgs.append({"role": "assistant", "content": f"<answer>{a}</answer>" if a else "no idea"})
        correct = [t + 1 == first for t in range(turns)]
        yield {
            "schema": 1,
            "prompt_id": f"p{i // k:07d}",
            "traj_id": i % k,
            "messages": msgs,
            "answers": answers,
            "correct": correct,
            "rewards": [float(c) for c in correct],
            "format_errors": answers.count(None),
            "first_correct_turn": first,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dir", default="/tmp/drift-bench")
    parser.add_argument("--repeat", type=int, default=3, help="end-to-end runs (the best is reported)")
    args = parser.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    src, out = d / "rollouts.jsonl", d / "weighted.jsonl"
    t = time.perf_counter()
    write_records(src, synthetic(args.n))
    print(
        f"input: {args.n} trajectories, {src.stat().st_size / 1e6:.0f} MB, written in {time.perf_counter() - t:.1f} s"
    )
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "drift.cli", "weight", str(src), "--out", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - t)
    print(f"drift weight end to end: {min(times):.2f} s (runs: {', '.join(f'{x:.2f}' for x in times)})")
    with paused_gc():  # as in drift weight
        t = time.perf_counter()
        cols, _ = read_columns(src)
        print(f"  read + validate into columns: {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        returns, weights = compute_weights(cols, WeightingOptions().weighting())
        print(f"  math (returns + group weights, numpy): {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        keep = [w is not None for w in weights]
        write_spliced(src, out, {"return": returns, "weight": weights}, keep)
        print(f"  write (fields spliced into the lines, fsync): {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        diagnostics(cols, returns, weights)
        print(f"  diagnostics: {time.perf_counter() - t:.2f} s")
        del cols
        records = read_records(src)
        t = time.perf_counter()
        compute_weights(records, WeightingOptions().weighting())
        print(
            f"compute_weights on {len(records)} record dicts (gather columns + math): {time.perf_counter() - t:.2f} s"
        )


if __name__ == "__main__":
    main()
