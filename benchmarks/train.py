"""Benchmark: training tokens/s of `drift train` against TRL's SFTTrainer on the same data.

    python benchmarks/train.py [--records FILE] [--steps 8] [--batch-size 8] [--dtype auto|float32|bfloat16]

Same model (SmolLM2-135M-Instruct), same examples (the last assistant turn of each trajectory,
weights 1), same batch size, the same precision (``--dtype``: auto = bf16 autocast on CPUs with
bf16 units, float32 otherwise; TRL gets ``bf16=True`` exactly when drift computes in bf16), AdamW.
Each trainer runs in its own process;
tokens/s counts non-padding tokens of the examples it trained on; peak memory is the process's
maximum resident set size. The CPU's matmul throughput (2048^3, in that dtype) gives the share of peak
the training step reaches, counting 6 * parameters * tokens FLOPs per step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

TRL_SCRIPT = r"""
import json, sys, time, resource, torch
from datasets import load_dataset
from trl import SFTConfig, SFTTrainer
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
data, model_path, steps, bs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
tok = AutoTokenizer.from_pretrained(model_path)
ds = load_dataset("json", data_files=data, split="train").remove_columns(["weight", "prompt_id", "traj_id", "turn"])
model = AutoModelForCausalLM.from_pretrained(model_path)
args = SFTConfig(output_dir=out, per_device_train_batch_size=bs, max_steps=steps, use_cpu=True,
                 bf16=sys.argv[6] == "bfloat16", learning_rate=1e-5, logging_steps=1000, save_strategy="no",
                 report_to=[], completion_only_loss=True, dataloader_num_workers=0)
tokens = [0]
class Count(TrainerCallback):
    def on_step_begin(self, a, s, c, **kw): pass
trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
orig = trainer.compute_loss
def counting(model, inputs, *a, **k):
    tokens[0] += int(inputs["attention_mask"].sum())
    return orig(model, inputs, *a, **k)
trainer.compute_loss = counting
t = time.perf_counter(); trainer.train(); secs = time.perf_counter() - t
print(json.dumps({"tokens": tokens[0], "seconds": secs,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

DRIFT_SCRIPT = r"""
import json, sys, time, resource
from drift.cli import main
data, model_path, steps, bs, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
t = time.perf_counter()
main(["train", data, "--model", model_path, "--out", out, "--max-steps", steps, "--batch-size", bs,
      "--micro-batch-size", bs, "--lr", "1e-5", "--dtype", sys.argv[6]])
summary = json.load(open(out + "/train_summary.json"))
print(json.dumps({"tokens": summary["tokens"], "seconds": summary["wall_seconds"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def matmul_gflops(dtype: str) -> float:
    import torch

    a = torch.randn(2048, 2048, dtype=getattr(torch, dtype))
    b = torch.randn(2048, 2048, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    t, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    return 2 * 2048**3 * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", help="weighted records (default: 256 synthetic arithmetic trajectories)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16 (both trainers)")
    args = parser.parse_args()
    from drift.models import resolve_dtype, resolve_model

    dtype = resolve_dtype(args.dtype, "cpu")
    print(f"machine: {describe()}; --dtype {args.dtype} -> {dtype}")

    model_path = resolve_model("smollm2-135m")
    with tempfile.TemporaryDirectory() as d:
        records = args.records or _synthetic(Path(d) / "w.jsonl")
        trl_data = Path(d) / "trl.jsonl"
        subprocess.run(
            [sys.executable, "-m", "drift.cli", "export-trl", records, "--out", str(trl_data)],
            check=True,
            capture_output=True,
        )
        results = {}
        for name, script, data in (("drift", DRIFT_SCRIPT, records), ("trl", TRL_SCRIPT, str(trl_data))):
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    script,
                    data,
                    model_path,
                    str(args.steps),
                    str(args.batch_size),
                    str(Path(d) / name),
                    dtype,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                sys.exit(proc.stderr[-3000:])
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    gflops = matmul_gflops(dtype)
    params = 134_515_008
    for name, r in results.items():
        tps = r["tokens"] / r["seconds"]
        share = 6 * params * tps / 1e9 / gflops
        print(
            f"{name}: {r['tokens']} tokens in {r['seconds']:.1f} s = {tps:.0f} tokens/s; "
            f"peak RSS {r['peak_rss_mb']:.0f} MB; {share:.0%} of the measured {dtype} matmul peak "
            f"({gflops:.0f} GFLOP/s)"
        )
    speed = {name: r["tokens"] / r["seconds"] for name, r in results.items()}
    print(f"drift / trl: {speed['drift'] / speed['trl']:.2f}x")


def _synthetic(path: Path) -> str:
    """256 multi-turn arithmetic trajectories, weight 1 (the shape drift train sees in the demo)."""
    import random

    from drift.records import write_records

    rnd, recs = random.Random(0), []
    for i in range(256):
        a, b = rnd.randint(10, 99), rnd.randint(10, 99)
        turns = rnd.randint(1, 5)
        msgs = [
            {"role": "system", "content": "You're a helpful assistant."},
            {
                "role": "user",
                "content": f"You are solving Math problems. Only give the final answer between "
                f"<answer> and </answer>.\n\nProblem:\nWhat is {a}+{b}?\n\nAlways output: <answer> [your answer] "
                f"</answer> with no extra text. Strictly follow this format.",
            },
        ]
        answers = [str(a + b + rnd.randint(-9, 9)) for _ in range(turns)]
        for t, ans in enumerate(answers):
            if t:
                msgs.append({"role": "user", "content": "Incorrect. Please think again."})
            msgs.append({"role": "assistant", "content": f"<answer>{ans}</answer>"})
        recs.append(
            {
                "schema": 1,
                "prompt_id": f"p{i // 8}",
                "traj_id": i % 8,
                "messages": msgs,
                "answers": answers,
                "correct": [False] * turns,
                "rewards": [0.0] * turns,
                "format_errors": 0,
                "first_correct_turn": None,
                "weight": 1.0,
            }
        )
    write_records(path, recs)
    return str(path)


if __name__ == "__main__":
    main()
