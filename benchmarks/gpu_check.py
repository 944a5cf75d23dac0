"""GPU check: every model-running command of drift on one NVIDIA GPU, in a few minutes.

    python benchmarks/gpu_check.py --out runs/gpu-check        # needs a CUDA GPU; < 8 min on one

Needs nothing but torch, transformers, accelerate, peft and drift's own dependencies; the model is
drift's tiny random Llama (a real architecture, built locally: no download). It checks, and says
which device and dtype each command reported:

1. ``drift rollout`` greedy and sampled (hf backend): replies on the GPU; sampled replies drawn from
   the per-row CPU generators, so the same seeds give the same text in float32 on GPU and CPU
   (the share that agrees is printed; float differences between devices may flip a rare token).
2. ``drift weight`` then ``drift train`` in bfloat16, full and LoRA (merged and not merged);
   ``drift eval`` loads the unmerged adapter folder. A micro-batch as a prefix tree (drift.packing)
   on the GPU gives the padded batch's logits in float32, and the full run says how many of its
   tokens it forwarded.
3. ``drift rl``, two rounds, on the GPU.
4. ``drift eval`` of the trained model.
5. With ``--launchers``: ``drift train`` under ``accelerate launch`` with the FSDP config and (if
   deepspeed is installed) the ZeRO-3 config on one process: one optimizer step per global batch
   and a loadable full model at the end.

Exits non-zero at the first failed check.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def drift(*args: str) -> None:
    from drift.cli import main

    t0 = time.perf_counter()
    rc = main(list(args))
    print(f"   drift {args[0]}: rc {rc}, {time.perf_counter() - t0:.1f} s", flush=True)
    if rc != 0:
        sys.exit(f"FAILED: drift {' '.join(args)}")


def packing_check(model: str, weighted: Path, device: str) -> float:
    """The largest difference, on trained positions, between the logits of 8 examples of
    ``weighted`` as a padded batch and as a prefix tree, float32, on ``device``."""
    import torch

    from drift.examples import build_examples, collate
    from drift.losses import completion_logits
    from drift.models import load_model, load_tokenizer
    from drift.packing import pack_rows

    tokenizer, net = load_tokenizer(model), load_model(model).to(device).eval()
    records = [json.loads(line) for line in weighted.read_text().splitlines()][:8]
    examples = [build_examples(r, tokenizer, index=i)[0] for i, r in enumerate(records)]
    plain = collate(examples, tokenizer.pad_token_id)
    tree = plain._replace(packed=pack_rows([e.input_ids for e in examples], plain.k))
    with torch.no_grad():
        a, b = completion_logits(net, plain.to(device)), completion_logits(net, tree.to(device))
    trained = (plain.labels != -100).to(device)
    return (a[trained] - b[trained]).abs().max().item()


def check(what: str, ok: bool) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        sys.exit(1)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu-check")
    parser.add_argument("--launchers", action="store_true", help="also run accelerate launch with FSDP / DeepSpeed")
    args = parser.parse_args()
    check("a CUDA GPU is visible", torch.cuda.is_available())
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from drift.tiny import build_tiny_model

    model = str(build_tiny_model(out / "tiny", head_dim=64))
    common = [
        "--model",
        model,
        "--task-options",
        "digits=1",
        "--max-new-tokens",
        "12",
        "--max-turns",
        "3",
        "--answer-mode",
        "lenient",
    ]
    t_start = time.perf_counter()

    # 1. rollouts
    drift(
        "rollout", *common, "--num-prompts", "16", "--n", "4", "--temperature", "0", "--out", str(out / "greedy.jsonl")
    )
    drift("rollout", *common, "--num-prompts", "16", "--n", "4", "--out", str(out / "sampled.jsonl"))
    summary = json.loads((out / "sampled.summary.json").read_text())
    check(f"sampled rollout on the GPU in {summary['dtype']}", summary["dtype"] == "bfloat16")
    from drift.backends.base import Sampling
    from drift.backends.hf import HFGenerator

    question = [[{"role": "user", "content": f"What is {a}+{a + 1}?"}] for a in range(32)]
    sampling = Sampling(temperature=1.0, max_new_tokens=12)
    gpu = HFGenerator(model, device="cuda", dtype="float32").generate(question, 1, sampling, seeds=list(range(32)))
    cpu = HFGenerator(model, device="cpu", dtype="float32").generate(question, 1, sampling, seeds=list(range(32)))
    same = sum(a == b for a, b in zip(gpu, cpu)) / len(gpu)
    check(f"seeded samples agree between GPU and CPU in float32: {same:.0%}", same >= 0.9)

    # 2. weights and training
    drift("weight", str(out / "sampled.jsonl"), "--out", str(out / "weighted.jsonl"))
    train = ["--batch-size", "8", "--micro-batch-size", "4", "--max-steps", "4", "--dtype", "bfloat16", "--lr", "1e-3"]
    for name, extra in [("full", []), ("lora", ["--lora-r", "8"]), ("adapter", ["--lora-r", "8", "--no-merge-lora"])]:
        drift("train", str(out / "weighted.jsonl"), "--model", model, "--out", str(out / name), *train, *extra)
        s = json.loads((out / name / "train_summary.json").read_text())
        check(
            f"train {name}: device {s['device']}, dtype {s['dtype']}, {s['steps']} steps",
            s["device"].startswith("cuda") and s["dtype"] == "bfloat16" and s["steps"] == 4,
        )
    check("--no-merge-lora wrote an adapter", (out / "adapter" / "model" / "adapter_config.json").exists())
    diff = packing_check(model, out / "weighted.jsonl", "cuda")
    check(f"a prefix tree's logits on the GPU: {diff:.2g} from the padded batch's (float32)", diff < 1e-3)
    s = json.loads((out / "full" / "train_summary.json").read_text())
    print(f"   train full: {s['forwarded_tokens']} of {s['tokens']} tokens forwarded (prefix trees)")
    drift(
        "eval",
        *common,
        "--model",
        str(out / "adapter" / "model"),
        "--num-prompts",
        "16",
        "--out",
        str(out / "eval-adapter"),
    )

    # 3. online RL
    drift(
        "rl",
        *common,
        "--steps",
        "2",
        "--prompts-per-step",
        "4",
        "--group-size",
        "4",
        "--out",
        str(out / "rl"),
        "--lr",
        "1e-3",
    )
    s = json.loads((out / "rl" / "rl_summary.json").read_text())
    check(
        f"rl: device {s['device']}, dtype {s['dtype']}, {s['steps']} rounds",
        s["device"].startswith("cuda") and s["steps"] == 2,
    )

    # 4. evaluation of the trained model
    drift("eval", *common, "--model", str(out / "full" / "model"), "--num-prompts", "16", "--out", str(out / "eval"))
    report = json.loads((out / "eval" / "report.json").read_text())
    check(f"eval: n={report['n']}, generation dtype {report['generation']['dtype']}", report["n"] == 16)

    # 5. launchers (optional)
    if args.launchers:
        configs = [("fsdp", "fsdp.yaml")]
        try:
            import deepspeed  # noqa: F401

            configs.append(("zero3", "deepspeed_zero3.yaml"))
        except ImportError:
            print("deepspeed not installed: ZeRO-3 skipped")
        for name, config in configs:
            cmd = [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--config_file",
                str(ROOT / "configs" / "accelerate" / config),
                "--num_processes",
                "1",
                "-m",
                "drift.cli",
                "train",
                str(out / "weighted.jsonl"),
                "--model",
                model,
                "--out",
                str(out / name),
                *train,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            check(
                f"accelerate launch {config}: rc {proc.returncode}", proc.returncode == 0 or print(proc.stderr[-3000:])
            )
            log = [json.loads(line) for line in (out / name / "train_log.jsonl").read_text().splitlines()]
            s = json.loads((out / name / "train_summary.json").read_text())
            from transformers import AutoModelForCausalLM

            loaded = AutoModelForCausalLM.from_pretrained(out / name / "model")
            check(
                f"{name}: strategy {s['strategy']}, {len(log)} logged steps, full model of "
                f"{sum(p.numel() for p in loaded.parameters())} parameters",
                len(log) == 4,
            )
    print(f"all checks passed in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
