"""``drift rl --algorithm trl-grpo``: TRL's own ``GRPOTrainer`` as the external baseline.

TRL samples (transformers ``generate``), computes advantages and the loss, and steps the
optimizer; drift supplies what makes the comparison fair: the same model folder, the same prompts
(the environment's opening messages, system prompt and instruction, given to TRL as a
conversation so that it applies the same chat template), the same answer parsing, verifier and
return, and compute counted as ``drift rl`` counts it. Needs TRL 1.16 or newer.

How RLConfig becomes GRPOConfig:

- a round is one TRL generation batch of ``generation_batch_size = B*G`` completions
  (``num_generations = G`` per prompt); ``num_iterations = epochs_per_round`` passes over it, each
  of ``minibatches`` (M) optimizer steps, so ``max_steps = steps * epochs_per_round * M``. One
  optimizer step covers B*G/M completions: ``per_device_train_batch_size`` is the largest
  divisor of B*G/(P*M) (P processes) not above ``micro_batch_size``, and
  ``gradient_accumulation_steps`` the quotient (:func:`batch_shape`).
- clip_ratio -> epsilon, kl_coef -> beta, normalize_std -> ``scale_rewards="group"`` (else
  ``"none"``), lr, lr_scheduler, warmup (``int(warmup_ratio * max_steps)`` steps, as drift's
  trainer rounds it), weight_decay, max_grad_norm, optimizer (``adamw_torch`` or ``sgd``),
  temperature, top_p, max_new_tokens -> max_completion_length, seed, gradient_checkpointing, LoRA
  (peft on every linear layer, as drift's trainer; merged into the saved model with merge_lora).
- ``loss_type="grpo"``: per completion the token mean of the clipped surrogate, then the mean over
  completions, which is drift rl's reduction (token mean per trajectory, mean over trajectories).
  TRL's default, ``"dapo"``, averages over every token of the batch instead.
- ``use_bias_correction_kl=False``: TRL 1.16 multiplies its k3 KL term by the importance ratio by
  default; drift rl adds the plain k3 estimator exp(ref - logp) - (ref - logp) - 1, and so does this.
- precision: float32 weights, bf16 (fp16) autocast only where drift would compute in bfloat16
  (float16), ``use_cpu`` when there is no GPU; no vLLM, no trackers, no TRL checkpoints.

Left as TRL does it (the baseline is TRL's trainer, not drift's loop):

1. TRL computes the old log-probs (the ratio's denominator; only when a round takes more than one
   optimizer step) and the reference log-probs once per round; drift rl forwards the reference
   model at every step.
2. TRL shuffles a round's completions once and reuses the same minibatches in every pass, as
   drift rl does (drift rl takes them in a new order each pass, and skips zero advantages: TRL
   forwards every completion). Prompts come in the order of TRL's seeded ``RepeatSampler``.
3. The group std that scales advantages is the sample std (Bessel's correction) plus 1e-4; drift
   rl divides by the population std, so TRL's advantages are sqrt((G-1)/G) times drift's.
4. The transformers Trainer exempts biases and norm weights from weight decay (drift decays all).
5. Sampling stops at the tokenizer's EOS and the model's ``generation_config`` EOS ids.
6. TRL scores the old log-probs on the round's unshuffled generation batch, not in the
   minibatches it then trains on: in bf16 the first update's ratio may stray from 1 by rounding
   (drift rl scores them in the updates' own micro-batches).
7. TRL divides the logits by the temperature in every log-prob it takes (current, old,
   reference); drift rl's loss uses the model's logits as they are. The same at temperature 1.
8. Each pass over the prompts drops the last ``num_prompts mod prompts_per_step`` of TRL's
   shuffled order (drift rl carries them into the next round, which holds no prompt twice); fewer
   prompts than ``prompts_per_step`` is refused.

Multi-turn is refused (``max_turns`` must be 1). TRL 1.16 has two multi-turn mechanisms, and
neither runs drift's correction environment (a wrong answer is followed by the user message
"Incorrect. Please think again." and another attempt): ``environment_factory`` / ``tools``
continue a conversation only while the model emits tool calls (the environment's methods are
tools; a plain reply ends the episode), and ``rollout_func`` (experimental) hands the whole
sampling loop to the caller, after which TRL trains all turns as one masked completion with one
advantage. The sampling would be drift's, not TRL's, and the target would differ from drift rl's.

Compute, per round, from what TRL did (``rl_log.jsonl`` lines are cumulative, as drift rl's):

- generated: the completion ids TRL hands the reward function (end token included);
- prefilled: the growth of TRL's own counter ``state.num_input_tokens_seen`` (prompt plus
  completion tokens of every row sampled, padding excluded, all processes) minus generated. TRL's
  transformers path samples each of the B*G rows with its own copy of the prompt: no sharing;
- scored: the round's prompt + completion tokens when TRL computes old log-probs
  (``gradient_accumulation_steps % (steps_per_generation * num_iterations) != 0``, its own test);
- reference: the same tokens when beta > 0; trained: num_iterations times them (every completion
  is forwarded and back-propagated once per pass). Padding TRL also runs is not counted, as in drift rl;
- seconds: generation runs from the round's first step to its reward call (sampling, plus the
  old and reference log-prob forwards TRL runs in the same call); training is the rest of the round.

FLOPs follow drift.compute; as run they equal the nominal ones (``*_forwarded_tokens`` = the
counts above: TRL runs every row whole, with no prefix trees). ``rl_log.jsonl`` holds drift's
per-round line; TRL's own log lines (loss, reward, kl, clip ratios, entropy, num_tokens) go to
``trl_log.jsonl``.
``save_steps`` is ignored and ``resume`` refused: there are no checkpoints to resume from. Also
unused: target (one turn is its own last turn), max_length, group_by_length, share_prefixes, batch_size,
skip_weight_share, model_generation_config, and the weighting scheme options (only the return's
gamma, lam and format_penalty matter; with one turn, only format_penalty).
"""

from __future__ import annotations

import copy
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

from drift import DriftError
from drift.compute import SHARED, TOKEN_FIELDS, count_parameters, flops_as_run, flops_of
from drift.outputs import write_json

OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd"}
"""drift's optimizer names -> the transformers Trainer's."""

TRL_SHAPE = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "generation_batch_size",
    "num_generations",
    "num_iterations",
    "max_steps",
    "loss_type",
)
"""The GRPOConfig fields, as TRL resolved them, that the summary reports under ``trl``."""


def batch_shape(prompts_per_step: int, group_size: int, minibatches: int, micro_batch_size: int, processes: int = 1):
    """``(per_device_train_batch_size, gradient_accumulation_steps)`` for one optimizer step over
    B*G/M completions: the micro-batch is the largest divisor of B*G/(P*M) at most ``micro_batch_size``.

    >>> batch_shape(8, 8, 1, 8)       # 64 completions, one step: 8 micro-batches of 8
    (8, 8)
    >>> batch_shape(2, 3, 2, 8)       # 6 completions, two steps of 3: micro-batches of 3
    (3, 1)
    >>> batch_shape(2, 5, 1, 4, processes=2)   # 5 completions per process: micro-batches of 1
    (1, 5)
    """
    completions = prompts_per_step * group_size
    if minibatches < 1 or completions % (processes * minibatches):
        raise DriftError(
            f"trl-grpo cuts a round of B*G = {completions} completions into {minibatches} minibatches on "
            f"{processes} process(es): B*G must be divisible by minibatches x processes"
        )
    per_step = completions // (processes * minibatches)
    micro = max(d for d in range(1, min(micro_batch_size, per_step) + 1) if per_step % d == 0)
    return micro, per_step // micro


def make_reward_function(problems: dict, make_env, params, tally=None, decode=None):
    """TRL's reward function: the return drift gives each completion as a one-turn trajectory.

    The completion goes through the environment (``reset(problem)``, ``step(text)``, ``record``),
    and drift.weighting.compute_returns scores the record, so for one turn
    ``R = r_1 - format_penalty * [no parsable answer]`` (r_1 = 1 when the verifier accepts the
    answer; the repetition penalty of a single answer is 0). ``problems``: prompt_id -> Problem;
    ``tally(returns, records, completion_ids)`` sees every scored batch. ``decode(ids) -> (text,
    finish_reason, ids spent)`` reads the sampled ids (drift.backends.hf.decode_reply: special tokens kept, as
    drift's own samples; TRL's completion text has dropped them); without it, TRL's text is used.
    """
    from drift.weighting import compute_returns

    def drift_return(prompts, completions, completion_ids, prompt_id, **_) -> list[float]:
        records: list[dict] = []
        for pid, completion, ids in zip(prompt_id, completions, completion_ids):
            env = make_env()
            env.reset(problems[pid])
            if decode is not None:
                text, finish, _ = decode(ids)
            else:
                text, finish = (completion[-1]["content"] if isinstance(completion, list) else completion), None
            env.step(text, finish, token_ids=ids)
            records.append(env.record(traj_id=len(records)))
        returns = compute_returns(records, params)
        if tally is not None:
            tally(returns, records, completion_ids)
        return returns

    return drift_return


class RoundLog:
    """Per-round bookkeeping, called by a TrainerCallback: compute counters, the ``rl_log.jsonl``
    line, snapshots and the FLOP budget. A round ends every ``steps_per_round`` optimizer steps."""

    def __init__(self, cfg, out: Path, parameters: int, steps_per_round: int, scores_old: bool, iterations: int):
        self.cfg, self.out, self.parameters = cfg, out, parameters
        self.steps_per_round, self.scores_old, self.iterations = steps_per_round, scores_old, iterations
        self.compute: dict[str, float] = {f"{k}_tokens": 0 for k in TOKEN_FIELDS}
        self.compute.update({f"{k}_forwarded_tokens": 0 for k in SHARED})
        self.compute.update(generation_seconds=0.0, training_seconds=0.0)
        self.rounds, self.seen = 0, 0
        self.local = [0.0, 0.0, 0.0, 0.0]  # this process, this round: sum R, correct, completions, generated
        self.started = self.scored_at = 0.0
        self.trainer: Any = None  # set once TRL's trainer exists: reduce over processes, save the policy

    def flops(self) -> float:
        return flops_of(self.parameters, self.compute)

    def tally(self, returns, records, completion_ids) -> None:
        """From the reward function: the round's returns, answers and sampled ids."""
        self.scored_at = time.perf_counter()
        self.local[0] += sum(returns)
        self.local[1] += sum(r["correct"][0] for r in records)
        self.local[2] += len(returns)
        self.local[3] += sum(len(ids) for ids in completion_ids)

    def begin(self, state) -> None:
        if state.global_step % self.steps_per_round == 0:
            self.started = time.perf_counter()

    def end(self, state, control) -> None:
        if state.global_step % self.steps_per_round:
            return
        import torch

        accelerator = self.trainer.accelerator
        total_r, correct, n, generated = accelerator.reduce(
            torch.tensor(self.local, dtype=torch.float64, device=accelerator.device), "sum"
        ).tolist()
        self.local = [0.0, 0.0, 0.0, 0.0]
        tokens, self.seen = state.num_input_tokens_seen - self.seen, state.num_input_tokens_seen
        c = self.compute
        c["generated_tokens"] += int(generated)
        c["prefilled_tokens"] += int(tokens - generated)
        c["scored_tokens"] += int(tokens) if self.scores_old else 0
        c["reference_tokens"] += int(tokens) if self.cfg.kl_coef > 0 else 0
        c["trained_tokens"] += int(tokens) * self.iterations
        for k in SHARED:  # TRL runs every example whole: as run, the nominal counts
            c[f"{k}_forwarded_tokens"] = c[f"{k}_tokens"]
        now = time.perf_counter()
        c["generation_seconds"] += self.scored_at - self.started
        c["training_seconds"] += now - self.scored_at
        self.rounds += 1
        entry = {
            "step": self.rounds,
            "mean_return": total_r / n,
            "acc_turn1": correct / n,
            "solved": correct / n,
            "updates": self.steps_per_round,
            "optimizer_steps": state.global_step,
            **c,
            "flops": self.flops(),
            "flops_as_run": flops_as_run(self.parameters, c),
        }
        if accelerator.is_main_process:
            with open(self.out / "rl_log.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
        if self.rounds in self.cfg.snapshot_steps:
            snapshot = self.out / "snapshots" / f"round-{self.rounds:05d}"
            tmp = snapshot.with_name(snapshot.name + ".tmp")
            save_policy(self.trainer, tmp, self.cfg)
            if accelerator.is_main_process:
                tmp.rename(snapshot)
            accelerator.wait_for_everyone()
        if self.cfg.max_flops is not None and entry["flops"] >= self.cfg.max_flops:
            control.should_training_stop = True

    def log(self, state, logs: dict) -> None:
        """TRL's own log line, verbatim, with its optimizer step."""
        if self.trainer.accelerator.is_main_process:
            with open(self.out / "trl_log.jsonl", "a") as f:
                f.write(json.dumps({"optimizer_step": state.global_step, **logs}) + "\n")


def save_policy(trainer, folder: Path, cfg) -> None:
    """The policy (LoRA merged on a copy unless ``merge_lora`` is off) and its tokenizer, in ``folder``."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.lora_r > 0 and cfg.merge_lora:
        model = copy.deepcopy(model).merge_and_unload()
    if trainer.accelerator.is_main_process:
        model.save_pretrained(folder, safe_serialization=True)
        trainer.processing_class.save_pretrained(folder)
    trainer.accelerator.wait_for_everyone()


def grpo_arguments(cfg, out: Path, processes: int, dtype: str, device: str) -> dict:
    """The GRPOConfig keywords for ``cfg`` (see the module docstring for each choice)."""
    micro, accumulation = batch_shape(
        cfg.prompts_per_step, cfg.group_size, cfg.minibatches, cfg.micro_batch_size, processes
    )
    max_steps = cfg.steps * cfg.epochs_per_round * cfg.minibatches
    return dict(
        output_dir=str(out),
        num_generations=cfg.group_size,
        generation_batch_size=cfg.prompts_per_step * cfg.group_size,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        num_iterations=cfg.epochs_per_round,
        max_steps=max_steps,
        loss_type="grpo",
        scale_rewards="group" if cfg.normalize_std else "none",
        epsilon=cfg.clip_ratio,
        beta=cfg.kl_coef,
        use_bias_correction_kl=False,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(cfg.warmup_ratio * max_steps),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=OPTIMIZERS[cfg.optimizer],
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_completion_length=cfg.max_new_tokens,
        seed=cfg.seed,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=device == "cpu",
        gradient_checkpointing=cfg.gradient_checkpointing,
        use_vllm=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )


def run_trl_grpo(cfg) -> dict:
    """Run TRL's GRPOTrainer with ``cfg`` (an RLConfig); write model/, rl_log.jsonl, trl_log.jsonl,
    rl_summary.json and config.yaml in ``cfg.out``; return the summary."""
    import trl
    from accelerate import PartialState
    from datasets import Dataset
    from packaging.version import Version
    from transformers import TrainerCallback

    from drift.backends.hf import decode_reply, end_token_ids
    from drift.models import default_device, load_model, load_tokenizer, resolve_dtype, resolve_model
    from drift.options import save_config
    from drift.rollout import env_factory
    from drift.tasks import load_problems
    from drift.trainer import lora_config

    if Version(trl.__version__) < Version("1.16"):
        raise DriftError(f"--algorithm trl-grpo needs trl>=1.16 (found {trl.__version__}): pip install 'trl>=1.16'")
    if not cfg.out:
        raise DriftError("no output folder given (--out DIR)")
    if cfg.max_turns != 1:
        raise DriftError(
            f"--algorithm trl-grpo is single-turn: pass --max-turns 1 (got {cfg.max_turns}). TRL "
            f"{trl.__version__} continues an episode only through tool calls (environment_factory, tools) or "
            "through a caller-written sampling loop (rollout_func); neither is TRL sampling drift's correction "
            "environment, where a wrong answer hears 'Incorrect. Please think again.' and tries again"
        )
    if cfg.backend != "hf":
        raise DriftError(
            f"--algorithm trl-grpo samples with TRL's own transformers generate, not --backend {cfg.backend}"
        )
    if not cfg.temperature > 0:
        raise DriftError("--algorithm trl-grpo samples: --temperature must be above 0")
    if cfg.epochs_per_round < 1:
        raise DriftError("epochs_per_round must be at least 1")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if cfg.resume:
            raise DriftError(f"--algorithm trl-grpo cannot resume (it keeps no checkpoints); {out} is not empty")
        raise DriftError(f"{out} is not empty; pass --resume to continue that run, or choose another --out")
    path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(path)
    problems = load_problems(
        cfg.task, source=cfg.source, split=cfg.split, limit=cfg.num_prompts, seed=cfg.seed, **cfg.task_options
    )
    if len(problems) < cfg.prompts_per_step:  # TRL would train no step at all (its sampler drops the tail)
        raise DriftError(
            f"task {cfg.task!r} gave {len(problems)} prompts, fewer than --prompts-per-step {cfg.prompts_per_step}"
        )
    make_env, verifier = env_factory(cfg)
    rows = [{"prompt": make_env().reset(p), "prompt_id": p.prompt_id} for p in problems]
    device = default_device()
    dtype = resolve_dtype(cfg.dtype, device)
    processes = PartialState().num_processes
    args = trl.GRPOConfig(**grpo_arguments(cfg, out, processes, dtype, device))
    parameters = count_parameters(path)
    iterations = args.num_iterations
    assert args.steps_per_generation is not None  # GRPOConfig.__post_init__ derives it from generation_batch_size
    rounds = RoundLog(
        cfg,
        out,
        parameters,
        steps_per_round=cfg.epochs_per_round * cfg.minibatches,
        # TRL's own test (GRPOTrainer._generate_and_score_completions) for computing old log-probs
        scores_old=args.gradient_accumulation_steps % (args.steps_per_generation * iterations) != 0,
        iterations=iterations,
    )

    class DriftRounds(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            rounds.begin(state)

        def on_step_end(self, args, state, control, **kwargs):
            rounds.end(state, control)

        def on_log(self, args, state, control, logs=None, **kwargs):
            rounds.log(state, logs or {})

    peft_config = lora_config(cfg) if cfg.lora_r > 0 else None
    model = load_model(path)
    ends = end_token_ids(tokenizer, model.generation_config)
    reward = make_reward_function(
        {p.prompt_id: p for p in problems},
        make_env,
        cfg.weighting(),
        rounds.tally,
        decode=partial(decode_reply, tokenizer, end_ids=ends),
    )
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[DriftRounds()],
        peft_config=peft_config,
    )
    rounds.trainer = trainer
    if trainer.accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    trainer.train()
    save_policy(trainer, out / "model", cfg)
    summary = {
        "algorithm": cfg.algorithm,
        "steps": rounds.rounds,
        "trajectories": rounds.rounds * cfg.prompts_per_step * cfg.group_size,
        "parameters": parameters,
        "flops": rounds.flops(),
        "flops_as_run": flops_as_run(parameters, rounds.compute),
        "verifier_timeouts": verifier.stats.timeouts,
        "verifier_errors": verifier.stats.errors,
        "processes": processes,
        "dtype": "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32",
        "device": str(args.device),
        "trl_version": trl.__version__,
        "multi_turn": False,
        "trl": {k: getattr(args, k) for k in TRL_SHAPE},
        "optimizer_steps": trainer.state.global_step,
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in rounds.compute.items()},
    }
    if trainer.accelerator.is_main_process:
        write_json(out / "rl_summary.json", summary)  # atomically: the study takes it for a finished run
        print(f"saved {out / 'model'}: {json.dumps(summary)}")
    return summary
