"""``drift rl``: the online multi-turn RL baseline (and iterated DRIFT) on the same environment.

Each round samples B prompts x G trajectories from the *current* policy with the rollout code
(drift.rollout.run_episodes), scores them with the same return as ``drift weight``, turns returns
into per-trajectory coefficients, and takes gradient steps on the same target turns as
``drift train`` with the same loss function (coefficient x token-mean NLL / D).

Departures from textbook PPO / GRPO, on purpose:

1. No ratio, no clipping: every batch is used for exactly one gradient step right after it is
   sampled (``updates_per_round=1``), so the PPO ratio is 1 and clipping never acts; the update is
   REINFORCE with a group baseline, A_i = R_i - mean_group R (divided by the group's std when
   ``normalize_std``, as GRPO does; groups with zero spread get A = 0).
2. Token-mean log-probability per trajectory, then a mean over trajectories (the same reduction as
   drift train), not a sum over tokens: long replies are not favoured.
3. The target is the last assistant turn (or all of them) with the whole history as context, as
   in drift train; earlier turns are context, not actions.
4. The optional KL penalty to the reference model is the k3 estimator
   exp(ref - logp) - (ref - logp) - 1, averaged over target tokens, added to the loss.
5. ``algorithm=drift`` makes this *iterated DRIFT*: the coefficients are DRIFT weights
   exp(R/beta)/Z over fresh samples of the current policy, and each round may be reused for
   ``updates_per_round`` steps (weighted SFT needs no ratio). Fully offline DRIFT is drift train.

Compute is counted the same way for every method: tokens generated, tokens forwarded in training,
and wall seconds spent generating and training (``rl_summary.json``).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path

from drift import DriftError
from drift.runlog import trim_log
from drift.weighting import WeightingParams, compute_returns, compute_weights, group_indices


def group_advantages(returns: list[float], groups: dict[str, list[int]], normalize_std: bool = True,
                     eps: float = 1e-6) -> list[float]:
    """``A_i = R_i - mean_g R`` (``/ std_g R`` when ``normalize_std``), per prompt group g.

    >>> # group of 4 returns (1, 0, 0, 0): mean 0.25, population std sqrt(3)/4 = 0.4330
    >>> [round(a, 3) for a in group_advantages([1.0, 0.0, 0.0, 0.0], {"p": [0, 1, 2, 3]})]
    [1.732, -0.577, -0.577, -0.577]
    >>> group_advantages([0.5, 0.5], {"p": [0, 1]})       # no spread: no signal
    [0.0, 0.0]
    """
    adv = [0.0] * len(returns)
    for idx in groups.values():
        values = [returns[i] for i in idx]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        for i in idx:
            centred = returns[i] - mean
            adv[i] = 0.0 if std < eps else (centred / (std + eps) if normalize_std else centred)
    return adv


def round_coefficients(records: list[dict], cfg) -> tuple[list[float], list[float]]:
    """Returns and per-trajectory loss coefficients (advantages, or DRIFT weights) of one round."""
    params = WeightingParams(beta=cfg.beta, gamma=cfg.gamma, lam=cfg.lam, format_penalty=cfg.format_penalty)
    if cfg.algorithm == "grpo":
        returns = compute_returns(records, params)
        return returns, group_advantages(returns, group_indices(records), cfg.normalize_std)
    return compute_weights(records, params)  # exactly drift weight's per-prompt weights


def kl_k3(logp, ref_logp, mask):
    """Per-sample mean over target tokens of ``exp(ref - logp) - (ref - logp) - 1`` (>= 0).

    Shapes: ``logp``, ``ref_logp``, ``mask``: (b, k). Returns (b,).
    """
    diff = (ref_logp - logp) * mask
    k3 = (diff.exp() - diff - 1) * mask
    return k3.sum(-1) / mask.sum(-1).clamp(min=1)


def _step_loss(model, ref_model, batch, denominator, autocast, kl_coef):
    from drift.losses import policy_gradient_loss, token_logprobs

    input_ids, attention, positions, labels, coef, k = batch
    with autocast:
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                       logits_to_keep=k + 1).logits[:, :-1]
    logp, mask = token_logprobs(logits, labels)
    mean_logp = (logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    loss = policy_gradient_loss(mean_logp, coef, denominator)
    kl = None
    if ref_model is not None:
        with __import__("torch").no_grad(), autocast:
            ref_logits = ref_model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                                   logits_to_keep=k + 1).logits[:, :-1]
        ref_logp, _ = token_logprobs(ref_logits, labels)
        kl = kl_k3(logp, ref_logp, mask)
        loss = loss + kl_coef * kl.sum() / denominator
    return loss, kl


def run_rl(cfg) -> dict:
    """``drift rl``: online rounds of sample -> score -> step; returns the summary with compute."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from drift.backends.base import Sampling
    from drift.backends.hf import HFGenerator
    from drift.config import save_config
    from drift.examples import build_examples, collate
    from drift.models import load_model, load_tokenizer, resolve_model
    from drift.rollout import env_factory, run_episodes
    from drift.tasks import load_examples

    if cfg.backend != "hf":
        raise DriftError("drift rl samples from the policy being trained: only --backend hf is supported")
    if not cfg.out:
        raise DriftError("no output folder given (--out DIR)")
    if cfg.algorithm == "grpo" and cfg.updates_per_round != 1:
        raise DriftError("grpo here is strictly on-policy (no importance ratio): use updates_per_round=1")
    out = Path(cfg.out)
    state_path = out / "checkpoint" / "state.pt"
    if out.exists() and any(out.iterdir()) and not cfg.resume:
        raise DriftError(f"{out} is not empty; pass --resume to continue that run, or choose another --out")
    torch.manual_seed(cfg.seed)
    path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    ref_model = load_model(path).eval() if cfg.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    total_updates = cfg.steps * cfg.updates_per_round
    scheduler = get_scheduler("constant_with_warmup", optimizer,
                              num_warmup_steps=int(cfg.warmup_ratio * total_updates))
    prompts = load_examples(cfg.task, source=cfg.source, split=cfg.split, limit=cfg.num_prompts, seed=cfg.seed,
                            **cfg.task_options)
    if not prompts:
        raise DriftError(f"task {cfg.task!r} gave no prompts")
    make_env, verifier = env_factory(cfg)
    generator = HFGenerator(path, batch_size=cfg.batch_size, autocast_bf16=cfg.bf16, model_obj=model,
                            tokenizer=tokenizer)
    sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    compute = {"generated_tokens": 0, "trained_tokens": 0, "generation_seconds": 0.0, "training_seconds": 0.0}
    step = 0
    if cfg.resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, compute = state["step"], state["compute"]
        print(f"resumed from {state_path} at step {step}")
    if cfg.resume:  # drop the rounds after the checkpoint (all of them without one): they are redone
        trim_log(out / "rl_log.jsonl", step)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    autocast = (torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16)
                if cfg.bf16 else contextlib.nullcontext())
    bar = tqdm(total=cfg.steps, initial=step, desc=f"rl ({cfg.algorithm})", unit="round", dynamic_ncols=True)
    while step < cfg.steps:
        # 1. sample B prompts x G trajectories from the current policy
        order = list(range(len(prompts)))
        epoch, offset = divmod(step * cfg.prompts_per_step, len(prompts))
        random.Random(cfg.seed * 7919 + epoch).shuffle(order)
        batch_prompts = [prompts[order[(offset + j) % len(prompts)]] for j in range(cfg.prompts_per_step)]
        t0, tok0 = time.perf_counter(), generator.tokens_generated
        records = run_episodes(batch_prompts, make_env, generator, n=cfg.group_size, max_turns=cfg.max_turns,
                               sampling=sampling, seed=cfg.seed * 1_000_003 + step)
        compute["generation_seconds"] += time.perf_counter() - t0
        compute["generated_tokens"] += generator.tokens_generated - tok0
        # 2. score
        returns, coef = round_coefficients(records, cfg)
        examples = []
        for i, (rec, c) in enumerate(zip(records, coef)):
            examples += build_examples(rec, tokenizer, index=i, target=cfg.target, max_length=cfg.max_length,
                                       weight=c)
        # 3. gradient step(s) on the same targets and loss as drift train
        t0 = time.perf_counter()
        model.train()
        losses, kls = [], []
        for _ in range(cfg.updates_per_round):
            denominator = float(len(examples))
            for m in range(0, len(examples), cfg.micro_batch_size):
                mb = collate(examples[m : m + cfg.micro_batch_size], tokenizer.pad_token_id)
                loss, kl = _step_loss(model, ref_model, mb, denominator, autocast, cfg.kl_coef)
                loss.backward()
                losses.append(loss.item())
                if kl is not None:
                    kls.append(kl.mean().item())
                compute["trained_tokens"] += int(mb[1].sum())
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        compute["training_seconds"] += time.perf_counter() - t0
        step += 1
        firsts = [r["first_correct_turn"] for r in records]
        entry = {"step": step, "mean_return": sum(returns) / len(returns),
                 "acc_turn1": sum(f == 1 for f in firsts) / len(firsts),
                 "solved": sum(f is not None for f in firsts) / len(firsts),
                 "loss": sum(losses) / max(cfg.updates_per_round, 1),
                 "kl": sum(kls) / len(kls) if kls else None, **compute}
        with open(out / "rl_log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        bar.update(1)
        bar.set_postfix(R=f"{entry['mean_return']:.3f}", solved=f"{entry['solved']:.2f}")
        if cfg.save_steps and step % cfg.save_steps == 0 and step < cfg.steps:
            _save_state(state_path, model, optimizer, scheduler, step, compute)
    bar.close()
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    summary = {"algorithm": cfg.algorithm, "steps": step, "trajectories": step * cfg.prompts_per_step * cfg.group_size,
               "verifier_timeouts": verifier.stats.timeouts, "verifier_errors": verifier.stats.errors,
               **{k: round(v, 2) if isinstance(v, float) else v for k, v in compute.items()}}
    (out / "rl_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved {out / 'model'}: {json.dumps(summary)}")
    return summary



def _save_state(path: Path, model, optimizer, scheduler, step: int, compute: dict) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "step": step,
                "compute": dict(compute)}, tmp)
    tmp.replace(path)
