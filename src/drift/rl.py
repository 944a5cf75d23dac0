"""``drift rl``: the online multi-turn RL baseline (and iterated DRIFT) on the same environment.

Each round samples B prompts x G trajectories from the *current* policy with the rollout code
(drift.rollout.run_episodes), scores them with the same return as ``drift weight``, turns returns
into per-trajectory coefficients, and takes gradient steps on the same target turns as
``drift train`` with the same loss function (coefficient x token-mean NLL / D).

Departures from textbook PPO / GRPO, on purpose:

1. A round's examples are shuffled once and cut into ``minibatches`` parts; ``epochs_per_round``
   passes take those same parts, each pass in its own order, one optimizer step each. With one
   update per round the update is REINFORCE with a group baseline (the sampling policy is the
   current one: the PPO ratio is 1 and clipping never acts), A_i = R_i - mean_group R (divided by
   the group's population std when ``normalize_std``; TRL divides by the sample std, sqrt(G/(G-1))
   smaller; groups with zero spread get A = 0). With more, grpo uses PPO's clipped surrogate
   (drift.losses.clipped_pg_terms) with the ratio to the policy that sampled, whose log-probs are
   computed once per round, before its first update, in the very micro-batches the updates will use
   (Trainer.completion_logprobs): in bf16 any other batching rounds differently, and an unmoved
   policy's ratio strayed from 1 by up to e^0.2, enough for the clip to act on rounding alone.
   Here the first update's ratio is exactly 1 in every precision (tested).
2. Token-mean log-probability per example, then a mean over the round's examples (the same
   reduction as drift train), not a sum over tokens: long replies are not favoured. With the
   default ``target=last`` an example is a trajectory; with ``all`` it is a turn, so trajectories
   with more turns weigh more.
3. The target is the last assistant turn (or all of them) with the whole history as context, as
   in drift train; earlier turns are context, not actions. Its log-probabilities are taken on the
   ids that were sampled (the records' ``token_ids``), not on re-tokenised text. With ``last``
   the trajectory's advantage lands on its final reply alone: the wrong turns that lowered R get
   no gradient, and a correct answer given at turn 2 in a group mostly solved at turn 1 gets a
   negative advantage (R = gamma < mean R), which pushes against correcting. Multi-turn GRPO as
   usually run (one advantage on every assistant token of the trajectory) is ``target=all``.
4. The optional KL penalty to the reference model is the k3 estimator
   exp(ref - logp) - (ref - logp) - 1, averaged over target tokens, added to the loss
   (drift.losses.kl_k3).
5. ``algorithm=drift`` makes this *iterated DRIFT*: the coefficients are DRIFT weights
   exp(R/beta)/Z over fresh samples of the current policy, and each round may be reused for
   several steps with no ratio (weighted SFT). Fully offline DRIFT is drift train.
6. As in drift train, examples whose coefficients together carry at most ``skip_weight_share`` of
   a step's summed |coefficient| are not forwarded (drift.train, note 4): iterated DRIFT's
   near-zero weights, grpo's zero advantages (exact: they add nothing to the loss). D is unchanged.
   Not with a KL penalty, which every example carries. The log counts them (``skipped_examples``).
7. The policy trains without dropout (drift.models.disable_dropout; TRL's GRPO does the same by
   default): the old log-probs and the reference's are scored without it, so with it a policy that
   has not moved would see a ratio and a KL away from 1 and 0. ``lora_dropout`` is unused here.

Compute is counted the same way for every method (``rl_summary.json``, and every line of
``rl_log.jsonl``): tokens prefilled and generated in sampling, scored (the old log-probs),
forwarded through the reference model (KL), trained, and of the last three the ones actually run
(``scored_forwarded_tokens``, ``reference_forwarded_tokens``, ``trained_forwarded_tokens``: fewer
where a round's samples share prefixes, drift.packing); wall seconds generating and training; and
the FLOP estimates of drift.compute, nominal (``flops``) and as run (``flops_as_run``).
``max_flops`` stops a run on the nominal estimate; ``snapshot_steps`` saves the policy along the way, so a
run is a curve of accuracy against compute, not a point. Each round's trajectories are kept in
``rounds/round-N.jsonl`` with their return and coefficient (``write_round``).

The update is drift.trainer's optimizer step, the one ``drift train`` takes: the same
accumulation, mixed precision, devices and checkpoints. Under several processes (DDP through
``torchrun`` or ``accelerate launch``) each process samples its share of the round's prompts with
its replica of the policy, and all of them train on the whole round. Sharded strategies (ZeRO-3,
FSDP) are refused: sampling needs the whole policy on every process.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from functools import partial
from pathlib import Path

from drift import DriftError
from drift.algorithms import ALGORITHMS, RUNNERS, round_coefficients, write_round
from drift.compute import SHARED, count_parameters, flops_as_run, flops_of, known_counts
from drift.outputs import write_json


def _pass_orders(n: int, per: int, seed: int, passes: int) -> list[list[int]]:
    """The order of each of the first ``passes`` passes over ``n`` prompts: its own shuffle (a
    function of the seed and the pass), except that where a round of ``per`` straddles two passes,
    the new pass starts with prompts the old one's part of that round does not hold."""
    orders: list[list[int]] = []
    for epoch in range(passes):
        order = list(range(n))
        random.Random(seed * 7919 + epoch).shuffle(order)
        tail = (epoch * n) % per  # slots of the previous pass in the round this pass starts in
        if epoch and tail:
            held = set(orders[-1][n - tail :])
            head = [p for p in order if p not in held][: per - tail]
            order = head + [p for p in order if p not in head]
        orders.append(order)
    return orders


def _round_prompts(prompts: list, step: int, cfg) -> list:
    """The B prompts of round ``step``: slots ``step * B .. step * B + B - 1`` of a stream of passes
    over the prompts (:func:`_pass_orders`), so that every prompt comes once a pass, and once a
    round, also where a round straddles two passes."""
    n, per = len(prompts), cfg.prompts_per_step
    slots = range(step * per, (step + 1) * per)
    orders = _pass_orders(n, per, cfg.seed, slots[-1] // n + 1)
    return [prompts[orders[slot // n][slot % n]] for slot in slots]


def _sample_round(
    trainer, batch_prompts, make_env, generator, sampling, cfg, step
) -> tuple[list[dict], tuple[int, int]]:
    """Every process samples prompts rank, rank + P, ...; all get the round's records in prompt order,
    and the numbers of tokens generated and prefilled over all processes."""
    from accelerate.utils import gather_object

    from drift.rollout import run_episodes

    mine = list(range(trainer.rank, len(batch_prompts), trainer.processes))
    tok0, pre0 = generator.tokens_generated, generator.tokens_prefilled
    records = run_episodes(
        [batch_prompts[j] for j in mine],
        make_env,
        generator,
        n=cfg.group_size,
        max_turns=cfg.max_turns,
        sampling=sampling,
        seed=cfg.seed * 1_000_003 + step,
    )
    tokens = (generator.tokens_generated - tok0, generator.tokens_prefilled - pre0)
    if trainer.processes == 1:
        return records, tokens
    n = cfg.group_size
    # one piece per prompt; a process's token counts ride on its first piece (one with no prompt counted none)
    pieces = gather_object(
        [(j, records[i * n : (i + 1) * n], tokens if i == 0 else (0, 0)) for i, j in enumerate(mine)]
    )
    pieces.sort(key=lambda piece: piece[0])
    generated, prefilled = (sum(t[k] for _, _, t in pieces) for k in range(2))
    return [r for _, recs, _ in pieces for r in recs], (generated, prefilled)


def _tally(compute: dict, **counts: int) -> None:
    """Add ``counts`` to ``compute``'s counters; an unknown one (``None``) stays unknown."""
    for k, n in counts.items():
        compute[k] = None if compute[k] is None else compute[k] + n


def run_rl(cfg) -> dict:
    """``drift rl``: online rounds of sample -> score -> step; returns the summary with compute."""
    if cfg.algorithm in RUNNERS:  # e.g. TRL's own trainer, not this loop (drift.trl_grpo)
        return RUNNERS[cfg.algorithm].run(cfg)
    algorithm = ALGORITHMS[cfg.algorithm]
    import torch
    from tqdm.auto import tqdm

    from drift.backends import policy_backend_class
    from drift.backends.base import Sampling
    from drift.examples import build_examples, plan_minibatches, to_forward
    from drift.losses import clipped_pg_terms, weighted_nll_terms
    from drift.models import disable_dropout, load_model, load_tokenizer, resolve_dtype, resolve_model
    from drift.rollout import env_factory
    from drift.tasks import load_problems
    from drift.trainer import Trainer

    if not cfg.out:
        raise DriftError("no output folder given (--out DIR)")
    backend_cls = policy_backend_class(cfg.backend)  # before any model loads: fail fast
    if cfg.epochs_per_round < 1 or cfg.minibatches < 1:
        raise DriftError("epochs_per_round and minibatches must be at least 1")
    if algorithm.on_policy and (cfg.temperature != 1 or cfg.top_p != 1):
        raise DriftError(
            f"--algorithm {cfg.algorithm} samples at temperature 1 and top_p 1 "
            f"(got {cfg.temperature:g} and {cfg.top_p:g}): "
            "its gradient, ratio and KL take the policy's log-probs as they are, so other samples would "
            "train a policy other than the one that drew them"
        )
    clipped = algorithm.on_policy and cfg.epochs_per_round * cfg.minibatches > 1
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.resume:
        raise DriftError(f"{out} is not empty; pass --resume to continue that run, or choose another --out")
    torch.manual_seed(cfg.seed)
    path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(path)
    trainer = Trainer(cfg, dtype=resolve_dtype(cfg.dtype), out=out, pad_token_id=tokenizer.pad_token_id)
    if trainer.strategy in ("DEEPSPEED", "FSDP"):
        raise DriftError(
            f"drift rl samples with the policy on every process; {trainer.strategy} shards it. "
            "Use DDP (accelerate launch with configs/accelerate/ddp.yaml, or torchrun)"
        )
    prompts = load_problems(
        cfg.task, source=cfg.source, split=cfg.split, limit=cfg.num_prompts, seed=cfg.seed, **cfg.task_options
    )
    if len(prompts) < cfg.prompts_per_step:  # a round would sample a prompt twice, with the same seeds
        raise DriftError(
            f"task {cfg.task!r} gave {len(prompts)} prompts, fewer than --prompts-per-step {cfg.prompts_per_step}"
        )
    parameters = count_parameters(path)
    trainer.prepare(load_model(path), cfg.steps * cfg.epochs_per_round * cfg.minibatches)  # rl refuses DeepSpeed
    disable_dropout(trainer.unwrapped())  # note 7
    ref_model = load_model(path).to(trainer.device).eval() if cfg.kl_coef > 0 else None
    reference = dict(ref_model=ref_model, kl_coef=cfg.kl_coef, ref_autocast=trainer.accelerator.autocast)
    # advantages (or DRIFT weights) as the examples' weights: see drift.losses
    loss_fn = (
        partial(clipped_pg_terms, clip_ratio=cfg.clip_ratio, **reference)
        if clipped
        else partial(weighted_nll_terms, **reference)
    )
    make_env, verifier = env_factory(cfg)
    generator = backend_cls.for_policy(
        trainer.unwrapped(), tokenizer, cfg, device=str(trainer.device), dtype=trainer.dtype
    )
    sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    compute = {
        "generated_tokens": 0,
        "prefilled_tokens": 0,  # prompt tokens the generator ran through the model (after sharing and reuse)
        "scored_tokens": 0,  # forwarded to get the sampling policy's log-probs (PPO's ratio)
        "reference_tokens": 0,  # forwarded through the reference model (KL penalty)
        "trained_tokens": 0,
        # of the last three, those actually run (prefix trees run shared prefixes once: drift.packing)
        **{f"{k}_forwarded_tokens": 0 for k in SHARED},
        "generation_seconds": 0.0,
        "training_seconds": 0.0,
    }
    state = trainer.start("rl", cfg, out, out / "rl_log.jsonl")
    step, compute = state["step"], {**compute, **known_counts(state.get("compute"))}
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        desc=f"rl ({cfg.algorithm})",
        unit="round",
        dynamic_ncols=True,
        disable=not trainer.is_main,
    )

    def spent() -> float:
        return flops_of(parameters, compute)

    if trainer.is_main:  # snapshots of rounds after the checkpoint are redone, with their rounds
        for snapshot in (out / "snapshots").glob("round-*"):
            # half-written: Trainer.save_model's .partial (.tmp: an older drift's)
            if snapshot.suffix in (".partial", ".tmp") or int(snapshot.name.split("-")[1]) > step:
                shutil.rmtree(snapshot)
    trainer.barrier()

    while step < cfg.steps and not (cfg.max_flops is not None and spent() >= cfg.max_flops):
        # 1. sample B prompts x G trajectories from the current policy
        t0 = time.perf_counter()
        records, tokens = _sample_round(
            trainer, _round_prompts(prompts, step, cfg), make_env, generator, sampling, cfg, step
        )
        generator.forget()  # its kept caches hold the weights the updates are about to change
        compute["generation_seconds"] += time.perf_counter() - t0
        compute["generated_tokens"] += tokens[0]
        compute["prefilled_tokens"] += tokens[1]
        # 2. score
        returns, coef = round_coefficients(records, cfg)
        examples = []
        for i, (rec, c) in enumerate(zip(records, coef)):  # the records hold the ids sampled
            if c is None:  # dropped by the weighting (all-fail or zero-variance groups, rft)
                continue
            examples += build_examples(rec, tokenizer, index=i, target=cfg.target, max_length=cfg.max_length, weight=c)
        # 3. optimizer steps on the same targets and loss as drift train: E passes of the same M minibatches
        # (a round whose every trajectory the weighting dropped takes no step: there is nothing to learn from)
        t0 = time.perf_counter()
        stats, skipped = [], 0
        share = cfg.skip_weight_share if ref_model is None else None  # a KL term rides on every example
        seed = cfg.seed * 7919 + step
        parts, orders = plan_minibatches(len(examples), cfg.minibatches, seed=seed, epochs=cfg.epochs_per_round)
        forward = [to_forward([examples[i] for i in part], share) for part in parts]
        if clipped:  # the ratio's denominator: the sampling policy, before any update, in the updates' micro-batches
            for kept, _ in forward:
                old, scored = trainer.completion_logprobs(kept)
                _tally(compute, scored_tokens=scored["tokens"], scored_forwarded_tokens=scored["forwarded_tokens"])
                for example, values in zip(kept, old):
                    example.old_logp = values
        for order in orders:
            for j in order:
                kept, dropped = forward[j]
                stats.append(trainer.step(kept, float(len(parts[j])), loss_fn))
                skipped += len(dropped)
        # a round with fewer updates (all dropped, or fewer examples than minibatches) keeps to the schedule
        trainer.advance_schedule(cfg.epochs_per_round * cfg.minibatches - len(stats))
        compute["training_seconds"] += time.perf_counter() - t0
        trained, run = (int(sum(s[k] for s in stats)) for k in ("tokens", "forwarded_tokens"))
        _tally(compute, trained_tokens=trained, trained_forwarded_tokens=run)
        if ref_model is not None:  # the reference runs the step's micro-batches
            _tally(compute, reference_tokens=trained, reference_forwarded_tokens=run)
        step += 1
        firsts = [r["first_correct_turn"] for r in records]
        entry = {
            "step": step,
            "mean_return": sum(returns) / len(returns),
            "acc_turn1": sum(f == 1 for f in firsts) / len(firsts),
            "solved": sum(f is not None for f in firsts) / len(firsts),
            "trained_trajectories": sum(c is not None for c in coef),
            "updates": len(stats),
            "skipped_examples": skipped,  # of negligible weight, not forwarded (summed over passes)
            "loss": sum(s["loss"] for s in stats) / len(stats) if stats else None,
            "lr": stats[-1]["lr"] if stats else None,
            "clipped_share": (
                sum(s["clipped_tokens"] for s in stats) / max(1.0, sum(s["trained_tokens"] for s in stats))
                if clipped and stats
                else None
            ),
            "kl": (
                sum(s["kl_sum"] for s in stats) / sum(s["examples"] for s in stats)
                if ref_model is not None and stats
                else None
            ),
            **compute,
            "flops": spent(),
            "flops_as_run": flops_as_run(parameters, compute),
        }
        if trainer.is_main:
            with open(out / "rl_log.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
            write_round(out / "rounds" / f"round-{step:05d}.jsonl", records, returns, coef, cfg.algorithm)
        bar.update(1)
        bar.set_postfix(R=f"{entry['mean_return']:.3f}", solved=f"{entry['solved']:.2f}")
        if step in cfg.snapshot_steps:  # (none of a later round exists: see the resume above)
            trainer.save_model(out / "snapshots" / f"round-{step:05d}", tokenizer, base_model=path)
        if cfg.save_steps and step % cfg.save_steps == 0 and step < cfg.steps:
            trainer.save_checkpoint(out / "checkpoints", step, cfg.save_total_limit, extra={"compute": dict(compute)})
    bar.close()
    trainer.save_model(out / "model", tokenizer, base_model=path)
    summary = {
        "algorithm": cfg.algorithm,
        "steps": step,
        "trajectories": step * cfg.prompts_per_step * cfg.group_size,
        "parameters": parameters,
        "flops": spent(),
        "flops_as_run": flops_as_run(parameters, compute),
        "verifier_timeouts": verifier.stats.timeouts,
        "verifier_errors": verifier.stats.errors,
        **trainer.describe(),
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in compute.items()},
    }
    if trainer.is_main:
        write_json(out / "rl_summary.json", summary)  # atomically: the study takes it for a finished run
        print(f"saved {out / 'model'}: {json.dumps(summary)}")
    return summary
