"""``drift demo``: the whole DRIFT pipeline on an embedded default, offline, on a CPU.

Stages (each writes into ``--out`` and is skipped when its output is already there):

0. ``warmup/``      format warm-up: the model's *own* greedy first answers on training problems,
                    rewritten as ``<answer>N</answer>`` (no gold answers), one short SFT. SmolLM2-135M
                    rarely writes the tags; after this it always does. The result is the reference
                    policy of everything below, "base" included.
1. ``base/``        evaluate the reference policy: greedy, T turns, held-out test problems
2. ``rollouts.jsonl``  K sampled correction trajectories per training problem (the decoupled rollouts)
3. ``weighted.jsonl``  DRIFT weights w = exp(R/beta) / mean_group exp(R/beta), groups where no
                    trajectory succeeds dropped (``--all-fail drop``; see drift weight --help)
4. ``drift/``       weighted SFT on the last assistant turn
5. ``drift-eval/``  evaluate the trained model exactly like the base one
6. ``comparison``   before/after table and plots (cumulative accuracy by turn, multi@k)

Answers are parsed leniently (tag, then ``\\boxed{}``, ``####``, last number) for every model.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from drift import DriftError
from drift import config as C
from drift.outputs import sidecar, write_json

PRESETS: dict[str, dict[str, Any]] = {
    # The real demo: SmolLM2-135M-Instruct on 2-digit addition (base multi@1 around 0.25).
    "full": dict(
        model="smollm2-135m",
        task_options={"digits": 2, "ops": "+"},
        warmup_prompts=128,
        train_prompts=64,
        k=8,
        eval_prompts=200,
        max_new_tokens=24,
        warmup_lr=5e-5,
        epochs=2.0,
        lr=2e-5,
        batch_size=16,
        micro_batch_size=8,
        all_fail="drop",
        generation_rows=128,  # sequences decoded together: 1.15x the tokens/s of 64 (benchmarks/README.md)
    ),
    # --quick: the same pipeline on a tiny random model in about a minute (used by the tests).
    "quick": dict(
        model="tiny-random",
        task_options={"digits": 1, "ops": "+"},
        warmup_prompts=8,
        train_prompts=6,
        k=2,
        eval_prompts=8,
        max_new_tokens=8,
        warmup_lr=1e-3,
        epochs=1.0,
        lr=1e-3,
        batch_size=4,
        micro_batch_size=4,
        all_fail="keep",
        generation_rows=8,
    ),  # a random model solves nothing: nothing to drop to
}


def balanced_chunk(prompts: int, rows: int) -> int:
    """Prompts per chunk (one generate call per turn) when ``prompts`` conversations are decoded at
    most ``rows`` at a time: as few chunks as that allows, of equal size, so that no small last chunk
    decodes a batch of a few rows (a CPU's matmuls run fuller on more rows).

    >>> balanced_chunk(200, 128), balanced_chunk(128, 128), balanced_chunk(5, 128)
    (100, 128, 5)
    """
    chunks = -(-prompts // rows)
    return -(-prompts // chunks)


def _stage(name: str, done: bool, timings: dict, fn):
    """Run ``fn`` unless ``done``; record its wall time; print a banner either way."""
    if done:
        print(f"\n== {name}: already done, reusing it (--fresh starts over)")
        timings[name] = "reused"
        return None
    print(f"\n== {name}")
    start = time.perf_counter()
    result = fn()
    timings[name] = round(time.perf_counter() - start, 1)
    return result


def build_format_warmup(records_path: Path, out_path: Path) -> int:
    """Rewrite each record's last reply as ``<answer>{its own extracted answer}</answer>``, weight 1.

    The answers are the model's, right or wrong: the warm-up teaches the format, not arithmetic.
    Replies with no extractable answer are left out. The rewritten reply is trained from its text
    (its sampled ids, and a cut by max_new_tokens, belonged to the reply it replaces). Returns how
    many examples were written.
    """
    from drift.answers import extract_answer
    from drift.prompts import ANSWER_FORMAT
    from drift.records import read_records, write_records

    kept = []
    for rec in read_records(records_path):
        raw = extract_answer(rec["messages"][-1]["content"], "lenient")
        if raw is not None:
            rec["messages"][-1]["content"] = ANSWER_FORMAT.format(answer=raw)
            rec.pop("token_ids", None)  # the sampled ids are those of the reply replaced: train the new text
            rec["finish_reasons"][-1] = "stop"  # a finished reply, with its end-of-turn marker
            rec["weight"] = 1.0
            kept.append(rec)
    write_records(out_path, kept)
    return len(kept)


def warmup_problem_seed(seed: int) -> int:
    """The seed of the training problems the format warm-up of a run at ``seed`` answers: not
    ``seed`` itself, whose problems that run trains on."""
    return seed + 1


def format_warmup(out: Path, shared: dict, preset: dict, seed: int, timings: dict) -> str:
    """Stage 0 (see the module docstring); returns the model folder every later stage starts from."""
    from drift.evaluate import run_eval
    from drift.train import run_train

    folder = out / "warmup"
    model = folder / "train" / "model"

    def warm_up():
        answers = C.EvalConfig(
            **{**shared, "max_turns": 1, "seed": warmup_problem_seed(seed)},
            num_prompts=preset["warmup_prompts"],
            split="train",
            out=str(folder / "own-answers"),
            resume=True,
        )  # equal chunks of at most a generation batch (drift study's: 64 of 64, the defaults)
        run_eval(replace(answers, chunk_prompts=balanced_chunk(preset["warmup_prompts"], answers.batch_size)))
        n = build_format_warmup(folder / "own-answers" / "records.jsonl", folder / "format.jsonl")
        print(f"{n} of the model's own answers, rewritten in the requested format")
        if n == 0:
            print("no answer to rewrite: skipping the warm-up")
            return
        run_train(
            C.TrainConfig(
                input=str(folder / "format.jsonl"),
                out=str(folder / "train"),
                model=shared["model"],
                epochs=2.0,
                lr=preset["warmup_lr"],
                batch_size=preset["batch_size"],
                dtype=shared["dtype"],
                micro_batch_size=preset["micro_batch_size"],
                warmup_ratio=0.1,
                seed=seed,
                resume=True,
            )
        )

    rewritten = folder / "format.jsonl"  # written before the warm-up trains: done only with no record in it
    _stage(
        "0/5 format warm-up (the model's own answers, wrapped in <answer> tags)",
        (model / "config.json").exists() or (rewritten.exists() and not rewritten.read_bytes().strip()),
        timings,
        warm_up,
    )
    return str(model) if (model / "config.json").exists() else shared["model"]


def run_demo(cfg) -> dict:
    """Run every stage; print the before/after table; return the comparison."""
    from drift.compare import run_compare
    from drift.evaluate import run_eval
    from drift.options import check_resume_config, save_config
    from drift.rollout import run_rollout
    from drift.train import run_train
    from drift.weight import run_weight

    preset = PRESETS["quick" if cfg.quick else "full"]
    out = Path(cfg.out if cfg.out else ("runs/demo-quick" if cfg.quick else "runs/demo"))
    if cfg.fresh and out.exists():
        if any(out.iterdir()) and not (out / "demo.config.yaml").exists():
            raise DriftError(f"{out} is not a demo folder (it has no demo.config.yaml): --fresh deletes only a demo's")
        aside = out.with_name(f".{out.name}.deleting")  # a kill mid-delete leaves no half demo under --out
        if aside.exists():
            shutil.rmtree(aside)
        out.rename(aside)
        shutil.rmtree(aside)
    if out.exists() and any(out.iterdir()) and not (out / "demo.config.yaml").exists():
        raise DriftError(
            f"{out} holds a demo's files but no demo.config.yaml: nothing says which options made them; "
            "delete the folder or choose another --out"
        )
    # finished stages are reused: only by a demo with the same options (else --fresh, or another --out)
    check_resume_config(
        cfg, out / "demo.config.yaml", may_change=("fresh",), remedy="--fresh to start over, or another --out"
    )
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo.config.yaml")
    print(f"drift demo: {preset['model']} on arithmetic {preset['task_options']}, output in {out}/")
    print("answer parsing: lenient (tag, \\boxed{}, ####, last number), the same for every model evaluated")
    timings: dict = {}
    shared = dict(
        model=preset["model"],
        task="arithmetic",
        task_options=preset["task_options"],
        max_turns=cfg.max_turns,
        answer_mode="lenient",
        max_new_tokens=preset["max_new_tokens"],
        seed=cfg.seed,
        dtype=cfg.dtype,
        batch_size=preset["generation_rows"],
    )
    shared["model"] = format_warmup(out, shared, preset, cfg.seed, timings)
    eval_cfg = C.EvalConfig(
        **shared,
        num_prompts=preset["eval_prompts"],
        chunk_prompts=balanced_chunk(preset["eval_prompts"], preset["generation_rows"]),
        split="test",
        resume=True,
    )
    rollout_cfg = C.RolloutConfig(
        **shared,
        num_prompts=preset["train_prompts"],
        chunk_prompts=max(1, preset["generation_rows"] // preset["k"]),  # a chunk's K trajectories fill a batch
        split="train",
        n=preset["k"],
        temperature=1.0,
        out=str(out / "rollouts.jsonl"),
        resume=True,
    )
    weighting = {**cfg.weighting_options(), "all_fail": cfg.all_fail or preset["all_fail"]}
    weight_cfg = C.WeightConfig(input=rollout_cfg.out, out=str(out / "weighted.jsonl"), plot=True, **weighting)
    train_cfg = C.TrainConfig(
        input=weight_cfg.out,
        out=str(out / "drift"),
        model=shared["model"],
        epochs=preset["epochs"],
        lr=preset["lr"],
        batch_size=preset["batch_size"],
        micro_batch_size=preset["micro_batch_size"],
        batch_by="prompt",  # whole prompts per step: their shared history runs once (benchmarks/README.md)
        warmup_ratio=0.1,
        seed=cfg.seed,
        save_steps=10,
        resume=True,
        dtype=cfg.dtype,
    )
    _stage(
        "1/5 evaluate the base model",
        (out / "base" / "report.json").exists(),
        timings,
        lambda: run_eval(replace(eval_cfg, out=str(out / "base"))),
    )
    _stage(
        "2/5 sample rollouts from the base model",
        (out / "rollouts.summary.json").exists(),
        timings,
        lambda: run_rollout(rollout_cfg),
    )
    weighted_done = sidecar(weight_cfg.out, "summary.json").exists()  # drift weight writes it last
    _stage("3/5 DRIFT weights", weighted_done, timings, lambda: run_weight(weight_cfg))
    _stage(
        "4/5 weighted SFT", (out / "drift" / "model" / "config.json").exists(), timings, lambda: run_train(train_cfg)
    )
    _stage(
        "5/5 evaluate the DRIFT model",
        (out / "drift-eval" / "report.json").exists(),
        timings,
        lambda: run_eval(replace(eval_cfg, out=str(out / "drift-eval"), model=str(out / "drift" / "model"))),
    )
    print("\n== before / after")
    comparison = run_compare(
        C.CompareConfig(reports=[str(out / "base"), str(out / "drift-eval")], names=["base", "drift"], out=str(out))
    )
    base, drift = (json.loads((out / d / "report.json").read_text()) for d in ("base", "drift-eval"))
    k = str(cfg.max_turns)
    gain = drift["cumulative_accuracy"][k] - base["cumulative_accuracy"][k]
    lo, hi = drift["cumulative_accuracy_ci"][k]
    print(
        f"\nmulti@{k}: {base['cumulative_accuracy'][k]:.3f} -> {drift['cumulative_accuracy'][k]:.3f} "
        f"(gain {gain:+.3f}; the DRIFT model's 95% interval is [{lo:.3f}, {hi:.3f}])"
    )
    print("stage wall times (s): " + ", ".join(f"{name.split(' ', 1)[1]}: {t}" for name, t in timings.items()))
    print(f"plots: {out}/cumulative_accuracy.png, {out}/multi_at_k.png, {out}/weighted.weights.png")
    summary = {"gain_multi_at_max_turns": gain, "timings": timings, "comparison": comparison}
    write_json(out / "demo_summary.json", summary, default=str)
    try:  # the page is a convenience: a failure to draw it does not fail the demo
        from drift.view import run_view

        run_view(C.ViewConfig(paths=[str(out)], out=str(out / "report.html"), title="drift demo"))
        print(f"page: {out}/report.html (open it in a browser)")
    except (DriftError, OSError, ValueError) as e:
        print(f"drift demo: could not write report.html: {e}")
    return summary
