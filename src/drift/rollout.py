"""Decoupled multi-turn rollouts: K correction trajectories per prompt from a fixed policy.

The loop is turn-synchronous over a *chunk* of prompts: at turn t every still-active episode of
the chunk goes to the generator in one call, replies are stepped through their environments, and
solved (or exhausted) episodes leave. When the chunk is finished its records are appended to the
output and flushed to disk, so a crash loses at most the chunk in flight.

Reproducibility: trajectory (prompt_id, traj_id) at turn t is sampled with the seed
``trajectory_seed(seed, prompt_id, traj_id, turn)``, and chunks are a fixed partition of the
prompt list. ``--resume`` keeps the complete chunks already on disk (dropping a torn last line
and a partly written chunk) and regenerates the rest, so kill -9 and resume gives the same file as
an uninterrupted run, up to rounding: the hf backend starts a chunk's first turn from the last
call's kept caches of the start its prompts share (drift.backends.hf_cache), and after a resume
that start is encoded afresh, in another batch; in bf16 that can flip a sampled token (in
float32 the test of kill and resume finds the same file). The compute counters (tokens generated
and prefilled, seconds) are saved after every chunk (``<out stem>.progress.json``), so a resumed run's
summary counts the whole run; a kill in the instant between a chunk's records and its counters
leaves that chunk uncounted, and the summary says so (``uncounted_chunks``). A resume must use
the first run's options, except for how a server is reached (``config.TRANSPORT_OPTIONS``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from drift import DriftError
from drift.backends.base import Sampling
from drift.metrics import cumulative_accuracy
from drift.outputs import atomic_write
from drift.records import dumps, iter_records


def trajectory_seed(seed: int, prompt_id: str, traj_id: int, turn: int) -> int:
    """A 63-bit seed determined by the run seed, the trajectory and the 1-based turn: the first 8
    bytes of the SHA-256 of ``f"{seed}\\0{prompt_id}\\0{traj_id}\\0{turn}"`` (UTF-8; NUL between the
    fields), read little-endian and shifted right by one bit.

    >>> trajectory_seed(0, "arith-000001", 3, 1)  # sha256(b"0\\x00arith-000001\\x003\\x001"): tests/test_rollout.py
    3690904702229881263
    >>> seeds = [trajectory_seed(0, "arith-000001", 3, 1), trajectory_seed(0, "arith-000001", 3, 2),
    ...          trajectory_seed(0, "arith-000001", 4, 1), trajectory_seed(0, "arith-000002", 3, 1),
    ...          trajectory_seed(1, "arith-000001", 3, 1)]  # another turn, trajectory, prompt, run seed
    >>> len(set(seeds)), all(0 <= s < 2**63 for s in seeds)
    (5, True)
    """
    digest = hashlib.sha256(f"{seed}\x00{prompt_id}\x00{traj_id}\x00{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with 0 <= i < N; ``None`` -> ``(0, 1)``.

    >>> parse_shard("1/4")
    (1, 4)
    """
    if not shard:
        return 0, 1
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise DriftError(f"--shard must look like i/N (e.g. 0/4), got {shard!r}") from None
    if not 0 <= i < n:
        raise DriftError(f"--shard {shard}: need 0 <= i < N")
    return i, n


def run_episodes(
    problems, make_env, generator, *, n: int, max_turns: int, sampling: Sampling, seed: int, extra: dict | None = None
) -> list[dict]:
    """Roll out ``n`` episodes of every problem; return their records (grouped by problem, traj_id order).

    ``make_env()`` builds a fresh environment for each episode. Each turn's finish reason and
    sampled ids (where the backend gives them, see drift.backends.base.Reply) go into the record.
    """
    episodes = []
    for ex in problems:
        for k in range(n):
            env = make_env()
            env.reset(ex)
            episodes.append((ex, k, env))
    active = list(episodes)
    for turn in range(1, max_turns + 1):
        if not active:
            break
        conversations = [env.messages for _, _, env in active]
        seeds = [trajectory_seed(seed, ex.prompt_id, k, turn) for ex, k, _ in active]
        replies = generator.generate(conversations, 1, sampling, seeds)
        if len(replies) != len(conversations) or any(len(r) != 1 for r in replies):
            raise DriftError(
                f"{type(generator).__name__} returned {len(replies)} reply lists, "
                f"{sum(len(r) != 1 for r in replies)} of them not holding 1 reply, for {len(conversations)} "
                f"conversations at turn {turn}; a backend returns a list of n replies per conversation"
            )
        still = []
        for (ex, k, env), (reply,) in zip(active, replies, strict=True):
            if not env.step(reply, getattr(reply, "finish_reason", None), getattr(reply, "token_ids", None)).done:
                still.append((ex, k, env))
        active = still
    return [env.record(traj_id=k, **(extra or {})) for _, k, env in episodes]


def _completed(out: Path, chunks: list[list], n: int) -> int:
    """Repair ``out`` for ``--resume``: keep the leading complete chunks, return how many.

    A torn last line (a crash mid-write) and the records of the one partly written chunk are
    removed, atomically, so the regenerated chunk starts clean. Anything else is an error and
    nothing is removed: a bad line, or a record that the problem list does not put in a finished
    chunk or the one being written (the source changed, or the problems came out in another order).
    """
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        with atomic_write(out) as f:
            f.write(data[: data.rfind(b"\n") + 1])
    lines = list(iter_records(out))
    counts = Counter(r["prompt_id"] for _, r in lines)
    done = 0
    while done < len(chunks) and all(counts.get(ex.prompt_id, 0) == n for ex in chunks[done]):
        done += 1
    chunk_of = {ex.prompt_id: i for i, chunk in enumerate(chunks) for ex in chunk}
    for line, rec in lines:
        if why := _misplaced(rec["prompt_id"], chunk_of, counts[rec["prompt_id"]], n, done):
            raise DriftError(
                f"{out}:{line}: cannot resume: {why}; the file was not made from this problem list "
                "(did the source or its order change?); nothing was removed: choose another --out"
            )
    keep_ids = {prompt_id for prompt_id, chunk in chunk_of.items() if chunk < done}
    if any(rec["prompt_id"] not in keep_ids for _, rec in lines):
        with atomic_write(out) as f:
            f.write(b"".join(dumps(rec) for _, rec in lines if rec["prompt_id"] in keep_ids))
    return done


def _misplaced(prompt_id: str, chunk_of: dict[str, int], count: int, n: int, done: int) -> str | None:
    """Why a record of ``prompt_id`` (``count`` of them on disk) cannot be in a file whose first
    ``done`` chunks are complete; ``None`` when it can."""
    where = chunk_of.get(prompt_id)
    if where is None:
        return f"prompt_id {prompt_id!r} is not one of the {len(chunk_of)} problems this run samples"
    if count > n:
        return f"{count} records of prompt_id {prompt_id!r}, not {n}"
    if where > done:
        return f"prompt_id {prompt_id!r} belongs to chunk {where + 1}, but chunk {done + 1} is unfinished"
    return None


COUNTERS = ("tokens_generated", "tokens_prefilled", "wall_seconds")


def _counted(progress: Path, done_chunks: int) -> tuple[dict, int]:
    """The counters of the ``done_chunks`` chunks already on disk, and how many of them have none."""
    import json

    zero = dict.fromkeys(COUNTERS, 0.0)
    if done_chunks == 0 or not progress.exists():
        return zero, done_chunks
    saved = json.loads(progress.read_text())
    if saved["chunks"] > done_chunks:  # the records were cut after the counters: nothing is known
        return zero, done_chunks
    return {k: saved[k] for k in COUNTERS}, done_chunks - saved["chunks"]


def sample_to_file(cfg, out: Path, *, desc: str = "rollout", generator=None) -> dict:
    """Roll out ``cfg`` into ``out`` (appending chunk by chunk, resuming when ``cfg.resume``).

    Shared by ``drift rollout`` and ``drift eval``. Pass a loaded ``generator`` to reuse a model
    (it is then not closed). Returns counts for the summary.
    """
    from tqdm.auto import tqdm

    from drift.backends import backend_from_config
    from drift.config import TRANSPORT_OPTIONS
    from drift.options import check_resume_config, save_config
    from drift.outputs import sidecar, write_json
    from drift.tasks import load_problems

    if out.exists() and not cfg.resume:
        raise DriftError(f"{out} exists; pass --resume to continue it, or choose another --out")
    shard_i, shard_n = parse_shard(cfg.shard)
    problems = load_problems(
        cfg.task, source=cfg.source, split=cfg.split, limit=cfg.num_prompts, seed=cfg.seed, **cfg.task_options
    )
    problems = problems[shard_i::shard_n]
    if not problems:
        raise DriftError(f"{cfg.source + ': ' if cfg.source else ''}task {cfg.task!r} gave no prompts")
    chunks = [problems[i : i + cfg.chunk_prompts] for i in range(0, len(problems), cfg.chunk_prompts)]
    config_path = sidecar(out, "config.yaml")
    progress = sidecar(out, "progress.json")
    if out.exists():
        if not config_path.exists():
            raise DriftError(
                f"cannot resume {out}: {config_path}, the options it was sampled with, is missing; "
                "put it back, or choose another --out"
            )
        check_resume_config(cfg, config_path, may_change=TRANSPORT_OPTIONS)
    else:
        progress.unlink(missing_ok=True)  # an older run's counters, not this one's
    done_chunks = _completed(out, chunks, cfg.n) if out.exists() else 0
    before, uncounted = _counted(progress, done_chunks)
    make_env, verifier = env_factory(cfg)
    sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    own_generator = generator is None
    if own_generator:
        generator = backend_from_config(cfg)
    extra = {
        "sampling": {**asdict(sampling), "model_generation_config": cfg.model_generation_config},
        "model": cfg.model,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_config(cfg, config_path)
    start, tokens0, prefill0 = time.perf_counter(), generator.tokens_generated, generator.tokens_prefilled
    firsts: list[int | None] = []
    bar = tqdm(
        total=len(problems),
        initial=sum(len(c) for c in chunks[:done_chunks]),
        unit="prompt",
        desc=desc,
        dynamic_ncols=True,
    )

    def counters() -> dict:
        now = {
            "tokens_generated": generator.tokens_generated - tokens0,
            "tokens_prefilled": generator.tokens_prefilled - prefill0,
            "wall_seconds": time.perf_counter() - start,
        }
        return {k: before[k] + now[k] for k in COUNTERS}

    try:
        with open(out, "ab") as f:
            for i, chunk in enumerate(chunks[done_chunks:], start=done_chunks + 1):
                records = run_episodes(
                    chunk,
                    make_env,
                    generator,
                    n=cfg.n,
                    max_turns=cfg.max_turns,
                    sampling=sampling,
                    seed=cfg.seed,
                    extra=extra,
                )
                f.write(b"".join(dumps(r) for r in records))
                f.flush()
                os.fsync(f.fileno())
                write_json(progress, {"chunks": i - uncounted, **counters()})
                firsts += [r["first_correct_turn"] for r in records]
                elapsed = time.perf_counter() - start
                bar.update(len(chunk))
                bar.set_postfix(
                    acc1=f"{sum(t == 1 for t in firsts) / len(firsts):.2f}",
                    solved=f"{sum(t is not None for t in firsts) / len(firsts):.2f}",
                    tok_s=f"{(generator.tokens_generated - tokens0) / max(elapsed, 1e-9):.0f}",
                )
    finally:
        bar.close()
        if own_generator:
            generator.close()
    total = counters()
    wall, tokens, prefilled = total["wall_seconds"], int(total["tokens_generated"]), int(total["tokens_prefilled"])
    return {
        "new_trajectories": len(firsts),
        "verifier_calls": verifier.stats.calls,
        "verifier_timeouts": verifier.stats.timeouts,
        "verifier_errors": verifier.stats.errors,
        # over the whole run, resumed parts included (see the module notes)
        "tokens_generated": tokens,
        "tokens_prefilled": prefilled,  # prompt tokens run through the model (after sharing and cache reuse)
        "uncounted_chunks": uncounted,
        "prefill_per_generated": round(prefilled / tokens, 3) if tokens else None,
        "dtype": getattr(generator, "dtype", None),
        "wall_seconds": round(wall, 2),
        "tokens_per_second": round(tokens / max(wall, 1e-9), 1),
    }


def run_rollout(cfg) -> dict:
    """``drift rollout``: sample, verify, write; print and save the summary."""
    from drift.outputs import sidecar, write_json

    if not cfg.out:
        raise DriftError("no output given (--out OUT)")
    out = Path(cfg.out)
    stats = sample_to_file(cfg, out)
    summary = rollout_summary(out, cfg.max_turns)
    summary.update(stats)
    write_json(sidecar(out, "summary.json"), summary)
    print_summary(summary)
    return summary


def env_factory(cfg):
    """``(make_env, verifier)``: fresh correction environments sharing one verifier (and its counts)."""
    from drift.env import make_env
    from drift.tasks import get_task
    from drift.verifiers import get_verifier

    spec = get_task(cfg.task)
    verifier = get_verifier(cfg.verifier or spec.verifier, cfg.verifier_timeout)

    def build():
        return make_env(
            spec, max_turns=cfg.max_turns, protocol=cfg.protocol, answer_mode=cfg.answer_mode, verifier=verifier
        )

    return build, verifier


def rollout_summary(path: Path, max_turns: int) -> dict:
    """Accuracy by turn and format errors over every trajectory in ``path``."""
    records = [rec for _, rec in iter_records(path)]
    return {
        "trajectories": len(records),
        "prompts": len({r["prompt_id"] for r in records}),
        "solved_by_turn": {str(t): a or 0.0 for t, a in cumulative_accuracy(records, max_turns).items()},
        "format_errors": sum(r["format_errors"] for r in records),
        "turns": sum(len(r["correct"]) for r in records),
    }


def print_summary(summary: dict) -> None:
    from drift.tables import format_table

    rows = [[f"solved by turn {t}", v] for t, v in summary["solved_by_turn"].items()]
    rows += [[k, v] for k, v in summary.items() if k != "solved_by_turn"]
    print(format_table(rows, ["rollout", ""]))
