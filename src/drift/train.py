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

Runs on one CPU/GPU as ``drift train`` and on many through ``accelerate launch -m drift.cli train``
(DDP, DeepSpeed, FSDP configs in ``configs/accelerate/``).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from pathlib import Path

from drift import DriftError
from drift.examples import build_examples, collate, plan_batches


def _load_examples(cfg, tokenizer):
    from drift.records import read_records

    records = read_records(cfg.input)
    examples = []
    for i, rec in enumerate(records):
        if "weight" not in rec:
            raise DriftError(f"{cfg.input}: record {i + 1} has no field 'weight'; run drift weight first")
        examples += build_examples(rec, tokenizer, index=i, target=cfg.target, max_length=cfg.max_length)
    return records, examples


def _autocast(cfg, accelerator):
    import torch

    if cfg.bf16:
        return torch.autocast(device_type=accelerator.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def micro_batch_loss(model, batch, denominator: float, autocast):
    """Weighted token-mean NLL of one micro-batch divided by the global normaliser."""
    from drift.losses import per_sample_nll, weighted_nll

    input_ids, attention, positions, labels, weights, k = batch
    with autocast:
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=k + 1)
    nll, counts = per_sample_nll(out.logits[:, :-1], labels)
    return weighted_nll(nll, weights.to(nll.device), denominator), nll.detach(), counts


def _set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _save_checkpoint(out: Path, step: int, accelerator, keep: int) -> None:
    """Save model, optimizer, scheduler and RNG states (accelerate) as checkpoints/step-N, keep the newest ``keep``."""
    import torch

    final = out / "checkpoints" / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        torch.save({"step": step}, tmp / "drift_step.pt")
        tmp.rename(final)
        old = sorted(p for p in (out / "checkpoints").glob("step-*") if not p.name.endswith(".tmp"))
        for p in old[: max(0, len(old) - keep)]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(p for p in (out / "checkpoints").glob("step-*") if not p.name.endswith(".tmp"))
    return found[-1] if found else None


def _wrap_lora(model, cfg):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _adamw(params, **kw):
    import torch

    return torch.optim.AdamW(params, **kw)


def _sgd(params, **kw):
    import torch

    return torch.optim.SGD(params, **kw)


OPTIMIZERS = {"adamw": _adamw, "sgd": _sgd}


def run_train(cfg) -> dict:
    """``drift train``: weighted SFT from a weighted JSONL; returns the run summary."""
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from drift.config import save_config
    from drift.models import load_model, load_tokenizer, resolve_model

    if not cfg.input or not cfg.out:
        raise DriftError("need an input file and --out (drift train weighted.jsonl --out runs/x)")
    if cfg.batch_size % cfg.micro_batch_size:
        raise DriftError(f"batch_size {cfg.batch_size} must be a multiple of micro_batch_size {cfg.micro_batch_size}")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.resume:  # checked before any rank writes there
        raise DriftError(f"{out} is not empty; pass --resume to continue that run, or choose another --out")
    accelerator = Accelerator(log_with=None if cfg.report_to == "none" else cfg.report_to, project_dir=str(out))
    world = accelerator.num_processes
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise DriftError(f"batch_size {cfg.batch_size} must be a multiple of micro_batch_size x processes "
                         f"({cfg.micro_batch_size} x {world})")
    _set_seed(cfg.seed)
    path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(path)  # checks the chat template before any work
    records, examples = _load_examples(cfg, tokenizer)
    if not examples:
        raise DriftError(f"{cfg.input}: no training examples")
    model = load_model(path)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.lora_r > 0:
        model = _wrap_lora(model, cfg)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = cfg.max_steps or math.ceil(steps_per_epoch * cfg.epochs)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS[cfg.optimizer](trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    start_step = 0
    if cfg.resume and (ckpt := latest_checkpoint(out)) is not None:
        accelerator.load_state(str(ckpt))
        start_step = torch.load(ckpt / "drift_step.pt")["step"]
        accelerator.print(f"resumed from {ckpt} at step {start_step}")
    accelerator.wait_for_everyone()  # every rank has checked --out before the main one writes to it
    if accelerator.is_main_process:
        if cfg.resume:  # the steps logged after the checkpoint are about to be redone
            from drift.runlog import trim_log

            trim_log(out / "train_log.jsonl", start_step)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    if cfg.report_to != "none":
        accelerator.init_trackers("drift", config={k: v for k, v in vars(cfg).items() if not isinstance(v, dict)})
    pad = tokenizer.pad_token_id
    rank, autocast = accelerator.process_index, _autocast(cfg, accelerator)
    log_path = out / "train_log.jsonl"
    bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
               disable=not accelerator.is_main_process)
    t0, tokens, trained_tokens = time.perf_counter(), 0, 0
    step = start_step
    model.train()
    while step < total_steps:
        epoch = step // steps_per_epoch
        plan = plan_batches(examples, cfg.batch_size, cfg.micro_batch_size * world, seed=cfg.seed, epoch=epoch,
                            group_by_length=cfg.group_by_length)
        for micro_batches in plan[step - epoch * steps_per_epoch :]:
            if step >= total_steps:
                break
            step_examples = [examples[i] for mb in micro_batches for i in mb]
            denominator = (len(step_examples) if cfg.reduction == "mean"
                           else sum(e.weight for e in step_examples)) or 1.0
            # each rank takes its slice of every micro-batch; DDP averages over ranks, so scale by world
            loss_sum, nll_sum, n_done = 0.0, 0.0, 0
            for m, mb in enumerate(micro_batches):
                mine = mb[rank::world]
                if not mine:
                    continue
                batch = [t.to(accelerator.device) if hasattr(t, "to") else t
                         for t in collate([examples[i] for i in mine], pad)]
                sync = m == len(micro_batches) - 1
                ctx = accelerator.no_sync(model) if not sync and world > 1 else contextlib.nullcontext()
                with ctx:
                    loss, nll, counts = micro_batch_loss(model, batch, denominator / world, autocast)
                    accelerator.backward(loss)
                loss_sum += loss.item()
                nll_sum += nll.sum().item()
                n_done += len(mine)
                tokens += batch[1].sum().item()
                trained_tokens += counts.sum().item()
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm else None
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            elapsed = time.perf_counter() - t0
            entry = {"step": step, "weighted_loss": loss_sum, "nll": nll_sum / max(n_done, 1),
                     "grad_norm": float(grad_norm) if grad_norm is not None else None,
                     "lr": scheduler.get_last_lr()[0], "tokens_per_second": tokens / max(elapsed, 1e-9)}
            bar.set_postfix(loss=f"{entry['weighted_loss']:.4f}", nll=f"{entry['nll']:.3f}",
                            tok_s=f"{entry['tokens_per_second']:.0f}")
            if accelerator.is_main_process and (step % cfg.log_steps == 0 or step == total_steps):
                with open(log_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")
                if cfg.report_to != "none":
                    accelerator.log(entry, step=step)
            if cfg.save_steps and step % cfg.save_steps == 0 and step < total_steps:
                _save_checkpoint(out, step, accelerator, cfg.save_total_limit)
    bar.close()
    wall = time.perf_counter() - t0
    accelerator.wait_for_everyone()
    final = accelerator.unwrap_model(model)
    if cfg.lora_r > 0 and cfg.merge_lora:
        final = final.merge_and_unload()
    summary = {"steps": step, "examples": len(examples), "records": len(records), "wall_seconds": round(wall, 2),
               "tokens": int(tokens * world), "trained_tokens": int(trained_tokens * world),
               "tokens_per_second": round(tokens * world / max(wall, 1e-9), 1)}
    if accelerator.is_main_process:
        final.save_pretrained(out / "model", safe_serialization=True)
        tokenizer.save_pretrained(out / "model")
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"saved {out / 'model'}  ({step} steps, {summary['tokens_per_second']:.0f} tokens/s, {wall:.0f} s)")
    if cfg.report_to != "none":
        accelerator.end_training()
    return summary

