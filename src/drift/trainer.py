"""The one optimizer step of every training method: ``drift train`` (DRIFT, SFT, RFT, RWR) and ``drift rl``.

accelerate owns devices, processes (DDP, DeepSpeed, FSDP) and mixed precision; this module owns how
a global batch of examples becomes exactly one optimizer step, the same on 1 or P processes:

1. The global batch (every process holds the same list) is sorted by length (less padding, same
   gradient) and cut into A micro-batches of ``micro_batch_size x P`` examples; process r takes
   examples r, r+P, r+2P, ... of each. Every process runs all A micro-batches: where its slice is
   empty (a short last batch) it runs a two-token example of weight 0, so it still joins every
   gradient all-reduce (a process that skipped one would leave the others waiting forever) and the
   gradient does not change.
2. Accumulation goes through ``accelerator.accumulate``: gradients are synchronised on the A-th
   micro-batch only, and that is where DeepSpeed steps its engine, once per global batch.
3. A micro-batch's loss is ``sum_i c_i / D`` (c_i = the method's per-example term, w_i * nll_i for
   weighted SFT; D = the whole global batch's normaliser, see drift.losses), multiplied by P (data
   parallelism averages gradients over processes) and by the accumulation divisor (accelerate, or
   DeepSpeed's engine, divides every loss by it): the gradient is that of the global batch in one piece.
4. The learning-rate scheduler steps once per optimizer step. (Prepared by accelerate with its
   default ``step_scheduler_with_optimizer=True``, it would step once per *process*, running the
   schedule P times too fast.) drift rl lays it out for E x M updates a round; a round that takes
   fewer moves it on by the rest (``advance_schedule``).
5. Shared prefixes (``share_prefixes``, drift.packing): a step's examples are sorted by their tokens
   instead of their length, each process takes runs of neighbours, and a micro-batch whose
   examples share enough runs as one prefix tree. The same terms, so the same gradient up to
   rounding; ``completion_logprobs`` cuts and packs exactly as the step does.
6. Checkpoints: accelerate's ``save_state`` into ``step-N.tmp``, renamed when every process has
   written its part. The final model: ``get_state_dict`` on every process (it gathers full weights
   under ZeRO-3 and FSDP), written by the main process.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drift import DriftError
from drift.examples import Batch, Example, collate, split_micro_batches
from drift.losses import weighted_nll_terms
from drift.packing import pair_cost

MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}
"""drift's dtype name -> accelerate's ``mixed_precision``."""

LossFn = Callable[..., tuple]
"""``loss_fn(model, batch) -> (terms, stats)``: per-example loss terms c_i, shape (b,), and a dict
of scalar tensors to add up over the step (``nll_sum``, ``trained_tokens``, ...)."""


def _adamw(params, *, device_type: str, **kw):
    """torch's AdamW; on a CPU its fused kernel (one pass over each parameter's state instead of a
    dozen elementwise ops: 0.22 s -> 0.08 s a step on SmolLM2-135M, 2-core EPYC; the same update up to
    rounding). On GPUs torch's own default (foreach)."""
    import torch

    return torch.optim.AdamW(params, fused=True if device_type == "cpu" else None, **kw)


def _sgd(params, *, device_type: str, **kw):
    import torch

    return torch.optim.SGD(params, **kw)


OPTIMIZERS = {"adamw": _adamw, "sgd": _sgd}


def _has_accelerator() -> bool:
    import torch

    accel = getattr(torch, "accelerator", None)
    return bool(accel.is_available()) if accel is not None else torch.cuda.is_available()


def fill_deepspeed_config(ds: dict, opts, processes: int, batch_size: int | None) -> int:
    """Fill what DeepSpeed would take from a DataLoader (drift feeds accelerate none) and from the
    run's options; return the nominal accumulation steps.

    Under DeepSpeed, accelerate's ``clip_grad_norm_`` only measures the norm: the engine clips at
    the config's ``gradient_clipping`` (accelerate fills ``auto`` with 1.0), so drift writes
    ``max_grad_norm`` there (0: off) and refuses a config that clips at another value.
    """
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = opts.micro_batch_size
    written = ds.get("gradient_clipping", "auto")
    if written == "auto":
        ds["gradient_clipping"] = float(opts.max_grad_norm)
    elif float(written) != float(opts.max_grad_norm):
        raise DriftError(
            f"the DeepSpeed config clips gradients at gradient_clipping {written} but --max-grad-norm is "
            f"{opts.max_grad_norm:g}: leave gradient_clipping out of the config (drift fills it) or make them agree"
        )
    per_step = opts.micro_batch_size * processes
    return max(1, (batch_size or per_step) // per_step)


class Trainer:
    """Model, optimizer, scheduler and ``accelerate.Accelerator`` for one run.

    Build it first (it starts the processes' group), then load the model and call :meth:`prepare`.

    Args:
        opts: an :class:`~drift.config.OptimizationOptions` (lr, optimizer, dtype, LoRA, ...).
        dtype: the *resolved* dtype (drift.models.resolve_dtype); bfloat16/float16 = autocast.
        out: run folder (trackers write there).
        pad_token_id: the tokenizer's pad id (batches are left-padded with it).
        report_to: experiment tracker name, or ``none``.
    """

    def __init__(self, opts, *, dtype: str, out: Path, pad_token_id: int, report_to: str = "none"):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState

        # accelerate keeps one state per process; a second run in the same process (the demo trains
        # twice; the Python API; tests) may ask for another precision. The process group, in
        # PartialState, is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        if dtype == "float16" and not _has_accelerator():
            raise DriftError(
                "--dtype float16 trains only on a GPU (accelerate runs no float16 autocast on a CPU: the run "
                "would be float32); use bfloat16 or float32, or auto"
            )
        self.opts, self.dtype, self.pad_token_id = opts, dtype, pad_token_id
        # cpu=True on a machine without an accelerator: several processes started by torchrun then
        # form a gloo group (MULTI_CPU); without it accelerate treats each as a world of one.
        self.accelerator = Accelerator(
            cpu=not _has_accelerator(),
            mixed_precision=MIXED_PRECISION[dtype],
            step_scheduler_with_optimizer=False,
            log_with=None if report_to == "none" else report_to,
            project_dir=str(out),
        )
        if self.accelerator.device.type == "cpu":
            from drift.models import keep_freed_memory

            keep_freed_memory()  # a training step frees and reallocates hundreds of MB
        self.model: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.pair_cost: float | None = None  # drift.packing: set by prepare when micro-batches share prefixes

    # -- who and where -----------------------------------------------------------------------

    @property
    def processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self):
        return self.accelerator.device

    @property
    def strategy(self) -> str:
        """``NO``, ``MULTI_CPU``, ``MULTI_GPU``, ``DEEPSPEED``, ``FSDP``, ..."""
        return str(self.accelerator.distributed_type).split(".")[-1]

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def describe(self) -> dict:
        """What the run saw, for its summary: processes, strategy, dtype, device."""
        return {"processes": self.processes, "strategy": self.strategy, "dtype": self.dtype, "device": str(self.device)}

    # -- set up ------------------------------------------------------------------------------

    def prepare(self, model, total_steps: int, batch_size: int | None = None) -> None:
        """Wrap ``model`` (LoRA when ``lora_r > 0``), build the optimizer and schedule, hand them to
        accelerate. ``batch_size``: the nominal global batch, for DeepSpeed's config."""
        from transformers import get_scheduler

        opts = self.opts
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is not None:
            self.accelerator.gradient_accumulation_steps = fill_deepspeed_config(
                plugin.deepspeed_config, opts, self.processes, batch_size
            )
        if opts.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        if opts.lora_r > 0:
            model = wrap_lora(model, opts)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = OPTIMIZERS[opts.optimizer](
            trainable, lr=opts.lr, weight_decay=opts.weight_decay, device_type=self.device.type
        )
        scheduler = get_scheduler(
            opts.lr_scheduler,
            optimizer,
            num_warmup_steps=int(opts.warmup_ratio * total_steps),
            num_training_steps=total_steps,
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.model.train()
        self.pair_cost = pair_cost(self.unwrapped()) if opts.share_prefixes else None

    def _micro_batches(self, examples: list[Example]) -> list[list[Example]]:
        """This process's micro-batches of a global batch (notes 1 and 5)."""
        return split_micro_batches(
            examples,
            self.opts.micro_batch_size,
            self.processes,
            self.rank,
            group_by_length=self.opts.group_by_length,
            by_prefix=self.pair_cost is not None,
        )

    def _tensors(self, micro_batch: list[Example]) -> Batch:
        """A micro-batch's tensors on the device, built when it runs (one micro-batch's at a time)."""
        return collate(micro_batch, self.pad_token_id, pair_cost=self.pair_cost).to(self.device)

    def _accumulation_divisor(self) -> int:
        """What accelerate (or DeepSpeed's engine) divides each micro-batch's loss by."""
        wrapped = getattr(self.accelerator, "deepspeed_engine_wrapped", None)
        if wrapped is not None:
            return int(wrapped.engine.gradient_accumulation_steps())
        return self.accelerator.gradient_accumulation_steps

    # -- the step ----------------------------------------------------------------------------

    def advance_schedule(self, steps: int) -> None:
        """Move the learning-rate schedule on by ``steps`` updates not taken (drift rl: a round with
        fewer updates than its share of the schedule)."""
        import warnings

        with warnings.catch_warnings():  # torch warns of a schedule step before any optimizer step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps):
                self.scheduler.step()

    def step(self, examples: list[Example], denominator: float, loss_fn: LossFn = weighted_nll_terms) -> dict:
        """One optimizer step on the global batch ``examples`` (the same list on every process).

        ``denominator``: D of ``sum_i c_i / D`` (drift.losses). Returns the step's totals over every
        process: ``loss`` (= sum_i c_i / D), ``examples``, ``tokens`` (the examples' tokens, padding
        excluded), ``forwarded_tokens`` (those run: a prefix tree runs shared prefixes once),
        ``grad_norm``, ``lr`` (the one the step used), and the sums ``loss_fn`` reports.
        """
        import torch

        if not examples:
            raise DriftError("an optimizer step needs at least one example")
        acc = self.accelerator
        batches = self._micro_batches(examples)
        # The number of micro-batches may differ from step to step (a short last batch, online RL):
        # tell accelerate, and restart its counter, so that gradients sync on the last one.
        acc.gradient_accumulation_steps = len(batches)
        acc.step = 0
        scale = self.processes * self._accumulation_divisor() / denominator
        lr = self.scheduler.get_last_lr()[0]
        totals: dict[str, torch.Tensor] = {}
        for mb in batches:
            batch = self._tensors(mb)
            with acc.accumulate(self.model):
                terms, stats = loss_fn(self.model, batch)
                acc.backward(terms.sum() * scale)
            real = torch.tensor([e.index >= 0 for e in mb], device=terms.device)
            tokens = batch[1][real].sum()
            stats = {
                **stats,
                "loss": terms.detach().sum() / denominator,
                "examples": real.sum(),  # fillers: 0
                "tokens": tokens,
                "forwarded_tokens": tokens if batch.packed is None else torch.tensor(batch.packed.n_nodes),
            }
            for key, value in stats.items():
                totals[key] = totals.get(key, 0) + value.detach().float().to(self.device)
        grad_norm = (
            acc.clip_grad_norm_(self.model.parameters(), self.opts.max_grad_norm) if self.opts.max_grad_norm else None
        )
        self.optimizer.step()
        if not self.optimizer.step_was_skipped:  # fp16 overflow: no step, and no schedule step either
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        keys = sorted(totals)
        summed = acc.reduce(torch.stack([totals[k] for k in keys]), reduction="sum").tolist()
        out = dict(zip(keys, summed))
        out.update(grad_norm=float(grad_norm) if grad_norm is not None else None, lr=lr)
        return out

    def completion_logprobs(self, examples: list[Example]) -> tuple[list[list[float]], dict]:
        """Log-probabilities of every example's completion tokens under the current model (no
        gradient, the training step's mixed precision), in order, and the counts over all processes:
        ``tokens`` (the examples' tokens) and ``forwarded_tokens`` (those run, as :meth:`step`
        counts them). ``examples`` are cut into the micro-batches :meth:`step` would cut them into
        (drift.examples.split_micro_batches): in bf16 or fp16 a batch's shape changes the rounding,
        so scored any other way the log-probs of an unchanged policy differ from the step's (by up
        to ~0.2 nats on SmolLM2-135M). Every process gets the whole list."""
        import torch
        from accelerate.utils import gather_object

        from drift.losses import completion_logits, token_logprobs

        position = {id(e): i for i, e in enumerate(examples)}
        scored, model = [], self.unwrapped()
        counts = {"tokens": 0, "forwarded_tokens": 0}
        model.eval()  # no dropout (LoRA's included): the ratio's denominator is the policy itself
        with torch.no_grad(), self.accelerator.autocast():
            for mb in self._micro_batches(examples):
                batch = self._tensors(mb)
                logp, _ = token_logprobs(completion_logits(model, batch), batch[3])
                tokens = sum(len(e.input_ids) for e in mb if id(e) in position)  # fillers: not examples
                counts["tokens"] += tokens
                counts["forwarded_tokens"] += tokens if batch.packed is None else int(batch.packed.n_nodes)
                for row, e in enumerate(mb):
                    if id(e) in position:
                        n = e.n_completion
                        scored.append((position[id(e)], logp[row, logp.shape[1] - n :].tolist() if n else []))
        model.train()
        if self.processes > 1:
            pieces = gather_object([(scored, counts)])
            scored = [s for p, _ in pieces for s in p]
            counts = {k: sum(c[k] for _, c in pieces) for k in counts}
        scored.sort(key=lambda pair: pair[0])
        return [values for _, values in scored], counts

    def start(self, command: str, cfg, out: Path, log: Path) -> dict:
        """Begin or resume a run in ``out``: with ``cfg.resume``, restore the newest checkpoint and trim
        ``log`` to its step; save the config. Returns the checkpoint's ``{"step": N, ...}`` (step 0 for none).
        Under several processes each one says what it saw."""
        from drift.options import check_resume_config, save_config
        from drift.outputs import trim_log

        state = {"step": 0}
        if cfg.resume:
            # a checkpoint restores the first run's optimizer, schedule and data order, and without
            # one the run starts over in the first run's folder: either way with its options;
            # snapshots (drift rl) may be added, as drift study adds rounds
            check_resume_config(cfg, out / "config.yaml", may_change=("snapshot_steps",))
        if cfg.resume and (ckpt := latest_checkpoint(out / "checkpoints")) is not None:
            state = self.load_checkpoint(ckpt)
            self.accelerator.print(f"resumed from {ckpt} at step {state['step']}")
        elif cfg.resume and out.exists():
            self.accelerator.print(
                f"no checkpoint in {out / 'checkpoints'}: starting from step 0 (--save-steps N keeps some)"
            )
        if self.processes > 1:
            print(
                f"drift {command}: process {self.rank} of {self.processes} ({self.strategy}, {self.device}, "
                f"{self.dtype})",
                flush=True,
            )
        self.barrier()  # every process has checked --out before the main one writes to it
        if self.is_main:
            if cfg.resume:  # the steps logged after the checkpoint (all of them without one) are redone
                trim_log(log, state["step"])
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        return state

    # -- checkpoints and the final model ----------------------------------------------------

    def save_checkpoint(self, root: Path, step: int, keep: int, extra: dict | None = None) -> None:
        """Save model, optimizer, scheduler and RNG states as ``root/step-N`` (keep the newest ``keep``)."""
        import torch

        final = root / f"step-{step:07d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier()
        self.accelerator.save_state(str(tmp))
        self.barrier()  # every process has written its part before the folder is renamed
        if self.is_main:
            torch.save({"step": step, **(extra or {})}, tmp / "drift_step.pt")
            tmp.rename(final)
            old = sorted(p for p in root.glob("step-*") if not p.name.endswith(".tmp"))
            for p in old[: max(0, len(old) - keep)]:
                shutil.rmtree(p, ignore_errors=True)
        self.barrier()

    def load_checkpoint(self, path: Path) -> dict:
        """Restore a :meth:`save_checkpoint` folder; returns its ``{"step": N, ...}``."""
        import torch

        self.accelerator.load_state(str(path))
        return torch.load(path / "drift_step.pt", weights_only=False)

    def save_model(self, folder: Path, tokenizer, base_model: str) -> None:
        """Write the trained model (full weights, or the LoRA adapter with ``--no-merge-lora``) and
        its tokenizer into ``folder``, whole or not at all: they go into ``<folder>.partial``, renamed
        when complete (a ``config.json`` is what later stages take for a finished training). Every
        process must call it (the weights are gathered)."""
        self.barrier()
        state = self.accelerator.get_state_dict(self.model)  # full weights on the main process
        if self.is_main:
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            final = self.unwrapped()
            if self.opts.lora_r > 0 and self.opts.merge_lora:
                # Merge on a fresh CPU copy: under ZeRO-3 / FSDP the live modules hold shards only.
                from drift.models import load_model

                fresh = wrap_lora(load_model(base_model), self.opts)
                fresh.load_state_dict(state)
                final, state = fresh.merge_and_unload(), None
            final.save_pretrained(partial, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(partial)
            shutil.rmtree(folder, ignore_errors=True)  # a model of an earlier run in the same folder
            partial.rename(folder)
        self.barrier()


def lora_config(opts):
    """peft's LoraConfig for ``opts`` (lora_r, lora_alpha, lora_dropout): every linear layer."""
    from peft import LoraConfig

    return LoraConfig(
        r=opts.lora_r,
        lora_alpha=opts.lora_alpha,
        lora_dropout=opts.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def wrap_lora(model, opts):
    from peft import get_peft_model

    return get_peft_model(model, lora_config(opts))


def latest_checkpoint(root: Path) -> Path | None:
    found = sorted(p for p in root.glob("step-*") if not p.name.endswith(".tmp"))
    return found[-1] if found else None
