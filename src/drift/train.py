"""Weighted SFT: ``drift train`` serves DRIFT and its offline baselines (sft, rft, rwr).

The methods differ only in the ``weight`` field of the input file (written by ``drift weight``);
this trainer reads that field and nothing else of the scoring. Departures from a textbook SFT
loop, on purpose:

1. The loss is ``sum_i w_i nll_i / D`` with D fixed per *global* batch (see drift.losses), so
   gradient accumulation and data parallelism change nothing but speed.
2. Batches are left-padded and the LM head runs only on the last k positions (k = the longest
   completion), the one place a vocabulary-sized tensor appears; prompts are usually far longer
   than the trained turn.
3. Within an optimizer step, examples are sorted by length before being cut into micro-batches:
   less padding, same gradient.
4. Examples of negligible weight are not forwarded (``skip_weight_share`` = eps, default 1e-4;
   ``none`` turns it off). In a step's global batch G, with W = sum_G w_i, the skipped set S is the
   longest run of G's lightest examples (sorted by weight, ties by position) with
   sum_S w_i <= eps * W: every weight 0 is in it, and S carries at most a share eps of W
   (drift.examples.negligible). D is still computed on the whole of G, so the kept terms are exactly
   today's and the gradient changes only by the dropped ones:

       || g_G - g_(G minus S) || = || sum_S w_i grad nll_i || / D <= eps * (W / D) * max_i || grad nll_i ||

   (W / D = 1 for ``reduction="weighted"``, the batch's mean weight for ``"mean"``). Gradient
   clipping (a projection onto a ball) cannot enlarge that difference; AdamW's update divides by
   a running scale, so it bounds the gradient, not the step. Batches are planned before skipping:
   steps, data order and the schedule are unchanged. A step whose examples are all skipped (all
   weights 0, so its gradient is exactly 0) still steps the optimizer and the schedule, on a
   two-token stand-in of weight 0 (AdamW's moments and weight decay then move as they would
   have). The decision reads only the step's weights, the same list on every process. The log's
   ``nll`` is the mean over forwarded examples; ``tokens`` and ``trained_tokens`` count forwarded
   examples only (``forwarded_tokens``: the tokens actually run, fewer where micro-batches share
   prefixes, drift.packing); the summary adds ``skipped_examples`` (summed over steps: an example
   skipped in two epochs counts twice) and ``skipped_weight_share`` (their weight over the steps'
   total).

The optimizer step itself (accumulation, several processes, mixed precision, checkpoints) is
drift.trainer's, shared with ``drift rl``. Runs on one CPU/GPU as ``drift train``, on several GPUs
through ``accelerate launch -m drift.cli train`` (DDP, DeepSpeed, FSDP configs in
``configs/accelerate/``) and on several CPU processes through ``torchrun --nproc-per-node N -m
drift.cli train``.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

from drift import DriftError
from drift.examples import build_examples, completion_sources, plan_batches, to_forward
from drift.outputs import write_json


def _load_examples(cfg, tokenizer):
    from drift.records import read_records

    records = read_records(cfg.input, weighted=True)
    examples = []
    for i, rec in enumerate(records):
        examples += build_examples(rec, tokenizer, index=i, target=cfg.target, max_length=cfg.max_length)
    return records, examples


def _set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def run_train(cfg) -> dict:
    """``drift train``: weighted SFT from a weighted JSONL; returns the run summary."""
    from tqdm.auto import tqdm

    from drift.models import load_model, load_tokenizer, resolve_dtype, resolve_model
    from drift.trainer import Trainer

    if not cfg.input or not cfg.out:
        raise DriftError("need an input file and --out (drift train weighted.jsonl --out runs/x)")
    if cfg.batch_size < 1 or cfg.micro_batch_size < 1:
        raise DriftError("batch_size and micro_batch_size must be >= 1")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.resume:  # checked before any process writes there
        raise DriftError(f"{out} is not empty; pass --resume to continue that run, or choose another --out")
    _set_seed(cfg.seed)
    path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(path)  # checks the chat template before any work
    trainer = Trainer(
        cfg, dtype=resolve_dtype(cfg.dtype), out=out, pad_token_id=tokenizer.pad_token_id, report_to=cfg.report_to
    )
    records, examples = _load_examples(cfg, tokenizer)
    if not examples:
        raise DriftError(f"{cfg.input}: no training examples")
    groups = [records[e.index].get("prompt_id") for e in examples] if cfg.batch_by == "prompt" else None
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = cfg.max_steps or math.ceil(steps_per_epoch * cfg.epochs)
    trainer.prepare(load_model(path), total_steps, cfg.batch_size)
    # The model (LoRA's initialisation included) is the same on every process; from here each
    # draws its own dropout masks. Data order has its own seeded generator (drift.examples).
    _set_seed(cfg.seed + trainer.rank)
    log_path = out / "train_log.jsonl"
    state = trainer.start("train", cfg, out, log_path)
    start_step = state["step"]
    if cfg.report_to != "none":
        trainer.accelerator.init_trackers(
            "drift", config={k: v for k, v in vars(cfg).items() if not isinstance(v, dict)}
        )
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not trainer.is_main,
    )
    # the run's counters so far (a checkpoint carries them: a resumed run's summary counts all of it)
    done = state.get("counts", {})
    t0, before = time.perf_counter(), done.get("seconds", 0.0)
    tokens, trained_tokens = done.get("tokens", 0.0), done.get("trained_tokens", 0.0)
    forwarded = done.get("forwarded_tokens", tokens)  # a checkpoint from before the count: every token
    skipped_examples, skipped_weight, total_weight = (done.get(k, 0.0) for k in ("skipped", "skipped_weight", "weight"))
    step = start_step
    while step < total_steps:
        epoch = step // steps_per_epoch
        plan = plan_batches(len(examples), cfg.batch_size, seed=cfg.seed, epoch=epoch, groups=groups)
        for indices in plan[step - epoch * steps_per_epoch :]:
            if step >= total_steps:
                break
            step_examples = [examples[i] for i in indices]
            weights = [e.weight for e in step_examples]
            denominator = (len(step_examples) if cfg.reduction == "mean" else sum(weights)) or 1.0  # on all of G
            forward, skipped = to_forward(step_examples, cfg.skip_weight_share)
            stats = trainer.step(forward, denominator)
            skipped_examples += len(skipped)
            skipped_weight += sum(weights[j] for j in skipped)
            total_weight += sum(weights)
            step += 1
            tokens += stats["tokens"]
            trained_tokens += stats["trained_tokens"]
            forwarded += stats["forwarded_tokens"]
            bar.update(1)
            elapsed = time.perf_counter() - t0
            entry = {
                "step": step,
                "weighted_loss": stats["loss"],
                "nll": stats["nll_sum"] / max(stats["examples"], 1),
                "grad_norm": stats["grad_norm"],
                "lr": stats["lr"],
                "skipped": len(skipped),
                "tokens_per_second": tokens / max(before + elapsed, 1e-9),
            }
            bar.set_postfix(
                loss=f"{entry['weighted_loss']:.4f}",
                nll=f"{entry['nll']:.3f}",
                tok_s=f"{entry['tokens_per_second']:.0f}",
            )
            if trainer.is_main and (step % cfg.log_steps == 0 or step == total_steps):
                with open(log_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")
                if cfg.report_to != "none":
                    trainer.accelerator.log(entry, step=step)
            if cfg.save_steps and step % cfg.save_steps == 0 and step < total_steps:
                counts = {"tokens": tokens, "trained_tokens": trained_tokens, "forwarded_tokens": forwarded,
                          "skipped": skipped_examples,
                          "skipped_weight": skipped_weight, "weight": total_weight,
                          "seconds": before + time.perf_counter() - t0}  # fmt: skip
                trainer.save_checkpoint(out / "checkpoints", step, cfg.save_total_limit, extra={"counts": counts})
    bar.close()
    wall = before + time.perf_counter() - t0
    trainer.save_model(out / "model", tokenizer, base_model=path)
    summary = {
        "steps": step,
        "examples": len(examples),
        "records": len(records),
        "wall_seconds": round(wall, 2),
        "tokens": int(tokens),
        "trained_tokens": int(trained_tokens),
        "forwarded_tokens": int(forwarded),
        "skipped_examples": int(skipped_examples),
        "skipped_weight_share": skipped_weight / total_weight if total_weight > 0 else 0.0,
        "tokens_per_second": round(tokens / max(wall, 1e-9), 1),
        "completions": completion_sources(records, tokenizer, cfg.target),
        **trainer.describe(),
    }
    if trainer.is_main:
        write_json(out / "train_summary.json", summary)  # atomically: the study takes it for a finished run
        print(
            f"saved {out / 'model'}  ({step} steps on {trainer.processes} process(es), {trainer.dtype}, "
            f"{summary['tokens_per_second']:.0f} tokens/s, {wall:.0f} s)"
        )
    if cfg.report_to != "none":
        trainer.accelerator.end_training()
    return summary
