"""The option groups that commands share: :class:`ReturnOptions` and :class:`WeightingOptions` (the
return and the weights), :class:`GenerationOptions` (the policy, the task and the environment),
:class:`EngineOptions` (a server's or vLLM's settings, for the commands that can use them),
:class:`OptimizationOptions` (the optimizer step). Their defaults, bounds and help text live here
and nowhere else; drift.config composes them into the commands' configs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from drift import DriftError
from drift.options import Checked, option


def _schemes():
    from drift.weighting import SCHEMES

    return SCHEMES


def _tasks():
    from drift.tasks import TASKS

    return TASKS


def _verifiers():
    from drift.verifiers import VERIFIERS

    return VERIFIERS


def _backends():
    from drift.backends import BACKENDS

    return BACKENDS


def policy_backends():
    """drift rl's ``--backend`` choices (drift.backends.POLICY_BACKENDS), read when its flags are built."""
    from drift.backends import POLICY_BACKENDS

    return POLICY_BACKENDS


MAX_TURNS = 5
"""T, the attempts an episode gets, unless a command is told otherwise."""

GENERATION_BATCH = 64
"""Sequences the hf backend decodes together, unless told otherwise."""

VERIFIER_TIMEOUT = 5.0
"""Seconds one ``math`` check may take before it counts as wrong."""


Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DTYPE_HELP = (
    "compute precision: auto = bfloat16 on GPUs that support it and on CPUs with bf16 units "
    "(AVX512-BF16, AMX), float32 otherwise (bf16 without such units is many times slower); "
    "bfloat16/float16 run the model in autocast with float32 weights for training (float16 training: GPUs only)"
)


@dataclass
class ReturnOptions(Checked):
    """The return of a trajectory (drift.weighting.trajectory_return):
    R = sum_t gamma^(t-1) r_t - format_penalty * (unparsable turns) - lam * (1 - unique/answers)."""

    gamma: float = option(0.9, "discount per turn: solving at turn t earns gamma^(t-1)", at_least=0.0, at_most=1.0)
    lam: float = option(0.5, "repetition penalty lam * (1 - unique answers / answers)", at_least=0.0)
    format_penalty: float = option(0.1, "subtracted from R for each turn with no parsable answer", at_least=0.0)


@dataclass
class WeightingOptions(ReturnOptions):
    """Return-based weights (drift.weighting): w = exp(R/beta) / mean over the prompt's K of exp(R/beta)
    under scheme drift. :meth:`weighting` is the one place these options become the math's parameters."""

    scheme: str = option(
        "drift",
        "drift: exp(R/beta) normalised per prompt; rwr: normalised over the file; "
        "sft: every trajectory weight 1; rft: keep trajectories that end correct, weight 1",
        choices=_schemes,
    )
    beta: float = option(
        0.1, "temperature of exp(R/beta): small beta puts the mass on the best trajectories", above=0.0
    )
    zero_variance: Literal["keep", "drop"] = option(
        "keep",
        "groups whose returns are all equal (a group of one trajectory among them): keep them at weight 1, "
        "or drop them",
    )
    all_fail: Literal["keep", "drop"] = option(
        "keep", "groups where no trajectory succeeds: keep them (weights then favour fewer repeats), or drop them"
    )
    clip: float | None = option(None, "cap on weights after normalisation (none: no cap)", above=0.0)

    def check(self) -> None:
        """The weighting's own checks, before a command writes anything (``all_fail`` None, drift
        demo's "its recipe decides", is checked as keep)."""
        from drift.weighting import WeightingParams

        super().check()
        WeightingParams(**{**self.weighting_options(), "all_fail": self.all_fail or "keep"})

    def weighting_options(self) -> dict:
        """The values of this group's fields (``WeightingOptions`` and ``ReturnOptions``) by name."""
        return {f.name: getattr(self, f.name) for f in fields(WeightingOptions)}

    def weighting(self):
        """These options as :class:`drift.weighting.WeightingParams` (validated there)."""
        from drift.weighting import WeightingParams

        return WeightingParams(**self.weighting_options())


TRANSPORT_OPTIONS = ("base_url", "concurrency", "request_timeout", "max_retries", "api_key_file")


@dataclass
class GenerationOptions(Checked):
    """Options shared by every command that runs a policy in the correction environment."""

    model: str = option(
        "smollm2-135m",
        "model folder, LoRA adapter folder, .gguf file, short name (smollm2-135m, tiny-random) or hub id",
    )
    backend: str = option(
        "hf",
        "hf: a transformers model (drift's decode loop, KV caches reused across turns); vllm: offline engine; "
        "openai: any OpenAI-compatible server; "
        "scripted: a fake policy for tests",
        choices=_backends,
    )
    batch_size: int = option(GENERATION_BATCH, "sequences decoded together for --backend hf", at_least=1)
    model_generation_config: bool = option(
        False,
        "--backend hf: also apply the logits processors of the model's own generation_config (repetition "
        "penalty, no-repeat n-grams, ...; not its top-k / min-p / typical-p: drift samples at --temperature / "
        "--top-p) through transformers' generate (slower: a batch's rows run until its last one ends); "
        "off: samples come from the model's distribution at --temperature / --top-p only",
    )
    dtype: Dtype = option("auto", DTYPE_HELP)
    task: str = option("arithmetic", "task name (drift.tasks says what each reads)", choices=_tasks)
    source: str | None = option(None, "dataset: local file/folder or hub name (default: the task's own)")
    split: str = option("train", "dataset split")
    task_options: dict = option(
        dict,
        "task knobs as k=v,k=v: arithmetic: digits=2, ops=+ (any of +-*), terms=2, mix=false; "
        "row tasks: question_field, answer_field, id_field (math, math500: solution_field; mcq: choices_field; "
        "metamathqa: type_prefix)",
    )
    num_prompts: int | None = option(None, "use the first N prompts (none: all)", at_least=1)
    max_turns: int = option(MAX_TURNS, "T: attempts per episode; stop at the first correct answer", at_least=1)
    protocol: Literal["simple", "full"] = option(
        "simple", "feedback after a wrong answer: simple or full (reward/turn block)"
    )
    answer_mode: Literal["strict", "lenient"] = option(
        "strict", "strict: only <answer>...</answer>; lenient: also \\boxed{}, '#### x', last number"
    )
    verifier: str | None = option(None, "override the task's verifier (none: the task's own)", choices=_verifiers)
    verifier_timeout: float = option(VERIFIER_TIMEOUT, "seconds per verification; a timeout counts as wrong", above=0.0)
    temperature: float = option(1.0, "sampling temperature (0: greedy)", at_least=0.0)
    top_p: float = option(1.0, "nucleus sampling mass", above=0.0, at_most=1.0)
    max_new_tokens: int = option(256, "longest reply per turn, in tokens", at_least=1)
    seed: int = option(0, "seed of the prompts (procedural tasks) and of every trajectory")


@dataclass
class EngineOptions(Checked):
    """How the backends that drift rl cannot use are reached and set up: an OpenAI-compatible
    server's address and transport (:data:`TRANSPORT_OPTIONS`), vLLM's engine. Commands that sample
    from a fixed policy (rollout, eval) have them; drift rl samples from the policy it trains (hf)."""

    base_url: str = option("http://127.0.0.1:8000/v1", "server URL for --backend openai")
    concurrency: int = option(16, "parallel requests for --backend openai", at_least=1)
    request_timeout: float = option(
        600.0,
        "seconds --backend openai waits for a connection or for a reply (replies are not streamed: "
        "the server sends a reply when all of it is written, so a long reply on a busy server needs long)",
        above=0.0,
    )
    max_retries: int = option(
        5,
        "extra tries of a request after a refused connection, a timeout, HTTP 408, 429 or 5xx (--backend openai)",
        at_least=0,
    )
    api_key_file: str | None = option(
        None,
        "file holding the API key a server needs, sent as a bearer token (--backend openai; a file, so "
        "that the key stays out of the configs runs save)",
    )
    tensor_parallel_size: int = option(1, "GPUs one model is split across, for --backend vllm", at_least=1)
    gpu_memory_utilization: float | None = option(
        None,
        "share of memory vLLM may use (weights + KV cache), for --backend vllm (none: 0.9 on GPUs; "
        "on CPUs 80%% of the memory free at start, at most 0.5)",
        above=0.0,
        at_most=1.0,
    )


@dataclass
class OptimizationOptions(Checked):
    """Options of the one optimizer step that drift train and drift rl share (drift.trainer)."""

    target: Literal["last", "all"] = option("last", "train the last assistant turn (the paper) or every one")
    max_length: int = option(
        1024,
        "tokens per example; a longer one is cut: the history from the left, and the trained reply "
        "(from its end) only where it is longer than what the history leaves and than half of this",
        at_least=2,
    )
    micro_batch_size: int = option(
        8, "examples per forward pass and process (gradient accumulation fills the batch)", at_least=1
    )
    lr: float = option(1e-5, "peak learning rate", at_least=0.0)
    optimizer: Literal["adamw", "sgd"] = option("adamw", "adamw, or plain sgd (least memory)")
    lr_scheduler: str = option("cosine", "transformers scheduler name: cosine, linear, constant_with_warmup, ...")
    warmup_ratio: float = option(0.03, "share of the optimizer steps spent warming up", at_least=0.0, at_most=1.0)
    weight_decay: float = option(0.0, "AdamW weight decay", at_least=0.0)
    max_grad_norm: float = option(1.0, "gradient clipping (0: off)", at_least=0.0)
    dtype: Dtype = option("auto", DTYPE_HELP)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    group_by_length: bool = option(True, "sort each step's examples by length before cutting micro-batches")
    share_prefixes: bool = option(
        True,
        "run the prefixes a micro-batch's examples share once, as a prefix tree with a 4D attention mask, where "
        "that is estimated faster (drift.packing: sdpa/eager, full attention, model types checked to match); "
        "each step's examples are then sorted by their tokens, not their length (the same gradient up to rounding)",
    )
    lora_r: int = option(0, "LoRA rank (0: full fine-tuning)", at_least=0)
    lora_alpha: int = option(16, "LoRA alpha", at_least=1)
    lora_dropout: float = option(
        0.0, "LoRA dropout (drift train; drift rl trains without dropout)", at_least=0.0, at_most=1.0
    )
    merge_lora: bool = option(True, "merge the LoRA adapter into the saved model")
    save_total_limit: int = option(2, "checkpoints kept", at_least=1)
    skip_weight_share: float | None = option(
        1e-4,
        "per step, do not forward the lightest examples while together they carry at most this share of the "
        "step's total |weight| (weight 0 always; D unchanged, so the gradient loses only their terms, "
        "<= share * sum |w| / D * max per-example gradient norm; drift rl: only without a KL penalty, which "
        "every example carries); none: forward every example",
        at_least=0.0,
        below=1.0,
    )

    def check(self) -> None:
        super().check()
        try:  # a scheduler transformers does not know would fail only after the model is loaded
            from transformers import SchedulerType
        except ImportError:  # without the hf extra no command trains
            return
        known = [s.value for s in SchedulerType]
        if self.lr_scheduler not in known:
            raise DriftError(
                f"lr_scheduler {self.lr_scheduler!r} is not one of transformers' schedulers: {', '.join(known)}"
            )
