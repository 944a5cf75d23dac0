"""drift rollout end to end: counts, determinism, shards, refusing to clobber, and crash + resume.

The resume guarantee (rollout.py's docstring) is that kill -9 at any moment followed by
``--resume`` gives the byte-identical file of an uninterrupted run. A crash can only leave a
prefix of that file on disk (chunks are appended and fsynced in order), so cutting copies of the
finished file at many byte offsets - mid-line, on line ends mid-chunk, on chunk ends - covers
every crash point deterministically; one real SIGKILL of a running process checks the rest
(the process really dies with the sidecar files written and a chunk on disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from drift.cli import main
from drift.records import read_records
from drift.rollout import trajectory_seed

SCRIPTED = ["--backend", "scripted", "--task", "arithmetic", "--max-turns", "3"]


def rollout(out: Path, *flags: str, num_prompts: int = 6, n: int = 3, chunk: int = 2, seed: int = 0) -> int:
    args = [
        "rollout",
        *SCRIPTED,
        "--num-prompts",
        str(num_prompts),
        "--n",
        str(n),
        "--chunk-prompts",
        str(chunk),
        "--seed",
        str(seed),
        "-o",
        str(out),
        *flags,
    ]
    return main(args)


def by_prompt(records: list[dict]) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for rec in records:
        groups[rec["prompt_id"]].append(rec)
    return dict(groups)


# -- a full run ------------------------------------------------------------------------------


def test_a_trajectorys_seed_is_the_documented_hash():
    """sha256 of "seed NUL prompt_id NUL traj_id NUL turn", its first 8 bytes little-endian, >> 1:
    the value is pinned, so that a change of the formula (which would sample other trajectories
    from the same options than earlier runs did) is seen."""
    digest = hashlib.sha256(b"0\x00arith-000001\x003\x001").digest()
    assert int.from_bytes(digest[:8], "little") >> 1 == 3690904702229881263
    assert trajectory_seed(0, "arith-000001", 3, 1) == 3690904702229881263
    digest = hashlib.sha256("7\x00über-2\x000\x0012".encode()).digest()  # UTF-8, two-digit turn
    assert trajectory_seed(7, "über-2", 0, 12) == int.from_bytes(digest[:8], "little") >> 1


def test_trajectory_seeds_differ_across_fields_and_use_63_bits():
    """Every (seed, prompt, trajectory, turn) its own seed; the NUL separators keep fields from
    running into each other ("a1", 2 is not "a", 12); the seed fills 63 bits, no more."""
    grid = [
        (s, p, k, t)
        for s in (0, 1, 10)
        for p in ("a", "a1", "arith-000001")
        for k in (0, 1, 2, 12)
        for t in (1, 2, 3, 23)
    ]
    seeds = [trajectory_seed(*key) for key in grid]
    assert len(set(seeds)) == len(grid) == 144
    assert trajectory_seed(0, "a1", 2, 3) != trajectory_seed(0, "a", 12, 3)
    assert trajectory_seed(0, "p", 1, 23) != trajectory_seed(0, "p", 12, 3)
    assert trajectory_seed(1, "0x", 0, 1) != trajectory_seed(10, "x", 0, 1)
    assert all(0 <= s < 2**63 for s in seeds) and max(seeds) >= 2**62  # P(all 144 below 2**62) = 2**-144


def test_scripted_rollout_writes_valid_records_and_sidecars(tmp_path):
    out = tmp_path / "r.jsonl"
    assert rollout(out, num_prompts=5, n=4) == 0
    records = read_records(out)  # validates every line
    assert len(records) == 5 * 4
    groups = by_prompt(records)
    assert len(groups) == 5
    assert all([r["traj_id"] for r in group] == [0, 1, 2, 3] for group in groups.values())
    # the K trajectories of a prompt are independent draws, not K copies of one
    assert sum(len({json.dumps(r["messages"]) for r in group}) > 1 for group in groups.values()) >= 4
    assert all(r["task"] == "arithmetic" and 1 <= len(r["correct"]) <= 3 for r in records)
    # an episode stops at its first correct turn, and only there
    assert all(
        r["correct"].index(True) + 1 == r["first_correct_turn"] == len(r["correct"])
        if True in r["correct"]
        else r["first_correct_turn"] is None and len(r["correct"]) == 3
        for r in records
    )

    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["trajectories"] == 20 and summary["prompts"] == 5 and summary["new_trajectories"] == 20
    solved = [
        sum(r["first_correct_turn"] is not None and r["first_correct_turn"] <= t for r in records) / 20
        for t in (1, 2, 3)
    ]
    assert list(summary["solved_by_turn"].values()) == pytest.approx(solved)
    assert summary["turns"] == sum(len(r["correct"]) for r in records)

    import yaml

    config = yaml.safe_load((tmp_path / "r.config.yaml").read_text())
    assert (config["n"], config["num_prompts"], config["backend"], config["out"]) == (4, 5, "scripted", str(out))


def test_same_seed_same_file_other_seed_other_file(tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    assert rollout(a, seed=3) == 0 and rollout(b, seed=3) == 0 and rollout(c, seed=4) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_chunking_does_not_change_the_records(tmp_path):
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    assert rollout(one, chunk=100) == 0 and rollout(many, chunk=1) == 0
    assert one.read_bytes() == many.read_bytes()


def test_shards_merge_to_the_unsharded_run(tmp_path):
    full, s0, s1 = tmp_path / "full.jsonl", tmp_path / "s0.jsonl", tmp_path / "s1.jsonl"
    assert rollout(full, num_prompts=7) == 0
    assert rollout(s0, "--shard", "0/2", num_prompts=7) == 0
    assert rollout(s1, "--shard", "1/2", num_prompts=7) == 0
    shard0, shard1 = by_prompt(read_records(s0)), by_prompt(read_records(s1))
    assert not set(shard0) & set(shard1)
    assert len(shard0) == 4 and len(shard1) == 3  # prompts 0, 2, 4, 6 and 1, 3, 5
    assert {**shard0, **shard1} == by_prompt(read_records(full))


# -- refusing and resuming -------------------------------------------------------------------


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert rollout(out) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert rollout(out, seed=9) == 2
    assert "exists; pass --resume" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_resume_with_other_options_is_refused(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert rollout(out) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert rollout(out, "--resume", n=5) == 2
    assert "options differ from the first run (n: 3 -> 5)" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert rollout(out, "--resume") == 0  # the same options: nothing left to do
    assert out.read_bytes() == before


def test_resume_may_reach_the_server_another_way(tmp_path):
    """How a server is reached (its URL, how many requests at once, how long to wait) does not
    change what it generates: a resume may change it (the server moved, or is slower now)."""
    out = tmp_path / "r.jsonl"
    assert rollout(out) == 0
    whole = out.read_bytes()
    out.write_bytes(b"".join(whole.splitlines(keepends=True)[:6]))  # a crash after the first chunk
    flags = ("--base-url", "http://10.0.0.9:8000/v1", "--concurrency", "3", "--request-timeout", "900")
    assert rollout(out, "--resume", *flags, "--max-retries", "0") == 0
    assert out.read_bytes() == whole


def _cut_points(data: bytes, rng: random.Random, count: int) -> list[int]:
    """Every line end (mid-chunk and chunk ends), empty, and ``count`` random offsets (mostly mid-line)."""
    line_ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    return sorted({0, len(data) - 1, *line_ends[:-1], *(rng.randrange(1, len(data)) for _ in range(count))})


def test_resume_after_a_crash_at_any_byte_gives_the_same_file(tmp_path):
    out = tmp_path / "r.jsonl"
    flags = {"num_prompts": 9, "n": 3, "chunk": 2, "seed": 5}  # chunks of 6 records, the last one of 3
    assert rollout(out, **flags) == 0
    data = out.read_bytes()
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    cuts = _cut_points(data, random.Random(0), 25)
    assert len(cuts) > 20 + 26 and sum(data[c - 1] != ord("\n") for c in cuts if c) >= 20
    for cut in cuts:
        out.write_bytes(data[:cut])  # what a crash leaves: a prefix, maybe ending mid-line
        (tmp_path / "r.summary.json").unlink()
        assert rollout(out, "--resume", **flags) == 0, f"cut at byte {cut}"
        assert out.read_bytes() == data, f"cut at byte {cut}"
        resumed = json.loads((tmp_path / "r.summary.json").read_text())
        keys = ("trajectories", "prompts", "solved_by_turn", "turns", "format_errors")
        assert {k: resumed[k] for k in keys} == {k: summary[k] for k in keys}
        kept_lines = data[:cut].count(b"\n")
        assert resumed["new_trajectories"] == 27 - 6 * (kept_lines // 6), f"cut at byte {cut}"


def test_resume_refuses_a_corrupt_middle_line(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert rollout(out) == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:2] + [b"{not json}\n"] + lines[3:]))
    capsys.readouterr()
    assert rollout(out, "--resume") == 2
    assert "r.jsonl:3" in capsys.readouterr().err


def test_resume_refuses_records_of_other_chunks_and_deletes_nothing(tmp_path, capsys):
    """Records that the current problem list does not put in the finished chunks or the one being
    written (the source changed, the chunks came out in another order) are refused, not dropped."""
    out = tmp_path / "r.jsonl"
    assert rollout(out) == 0
    lines = out.read_bytes().splitlines(keepends=True)
    gap = b"".join(lines[6:])  # chunks 2 and 3 are whole, chunk 1 is missing
    out.write_bytes(gap)
    capsys.readouterr()
    assert rollout(out, "--resume") == 2
    err = capsys.readouterr().err
    assert "r.jsonl:1" in err and "chunk 2" in err and "nothing was removed" in err
    assert out.read_bytes() == gap
    alien = lines[0].replace(b'"prompt_id":"', b'"prompt_id":"other-')
    assert alien != lines[0]
    out.write_bytes(b"".join(lines[:6]) + alien)
    assert rollout(out, "--resume") == 2
    err = capsys.readouterr().err
    assert "r.jsonl:7" in err and "not one of" in err
    assert out.read_bytes() == b"".join(lines[:6]) + alien


def test_resume_refuses_records_without_their_config(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert rollout(out) == 0
    (tmp_path / "r.config.yaml").unlink()
    before = out.read_bytes()
    capsys.readouterr()
    assert rollout(out, "--resume", seed=4) == 2
    assert "r.config.yaml" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_a_fresh_run_does_not_adopt_an_old_runs_counters(tmp_path, monkeypatch):
    """A fresh run killed between its first chunk's records and its counters, then resumed, must
    not take the counters an older run left beside the same --out."""
    import drift.outputs

    out = tmp_path / "r.jsonl"
    assert rollout(out) == 0
    progress = tmp_path / "r.progress.json"
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "chunks": 1, "tokens_generated": 10**9}))
    out.unlink()
    write_json = drift.outputs.write_json

    def killed_before_the_counters(path, *args, **kwargs):
        if Path(path) == progress:
            raise KeyboardInterrupt
        return write_json(path, *args, **kwargs)

    monkeypatch.setattr(drift.outputs, "write_json", killed_before_the_counters)
    assert rollout(out) == 130
    assert len(out.read_bytes().splitlines()) == 6  # the first chunk's records
    monkeypatch.setattr(drift.outputs, "write_json", write_json)
    assert rollout(out, "--resume") == 0
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["tokens_generated"] < 10**9 and summary["uncounted_chunks"] == 1


# -- the tiny real model ---------------------------------------------------------------------

HF_FLAGS = [
    "--backend",
    "hf",
    "--task",
    "arithmetic",
    "--max-turns",
    "2",
    "--max-new-tokens",
    "4",
    "--temperature",
    "1.0",
    "--n",
    "2",
    "--dtype",
    "float32",
]


def test_tiny_model_rollout_end_to_end(tmp_path, tiny_model):
    out = tmp_path / "r.jsonl"
    args = ["rollout", *HF_FLAGS, "--model", tiny_model, "--num-prompts", "3", "--chunk-prompts", "2", "-o", str(out)]
    assert main(args) == 0
    records = read_records(out)
    assert len(records) == 6
    assert sorted((r["prompt_id"], r["traj_id"]) for r in records) == [
        (f"arith-{i:06d}", k) for i in range(3) for k in range(2)
    ]
    assert all(r["model"] == tiny_model and r["sampling"]["temperature"] == 1.0 for r in records)
    for r in records:
        replies = [m for m in r["messages"] if m["role"] == "assistant"]
        assert len(replies) == len(r["correct"]) == len(r["answers"])
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["trajectories"] == 6 and 0 < summary["tokens_generated"] <= 4 * summary["turns"]
    # prefill is counted, and cache reuse makes it less than re-encoding every turn's whole prompt
    from drift.chat import render_prompt
    from drift.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    every_prompt = sum(
        len(render_prompt(tok, r["messages"][:i]))
        for r in records
        for i, m in enumerate(r["messages"])
        if m["role"] == "assistant"
    )
    assert 0 < summary["tokens_prefilled"] < every_prompt
    assert summary["prefill_per_generated"] == round(summary["tokens_prefilled"] / summary["tokens_generated"], 3)
    again = tmp_path / "again.jsonl"
    assert main(args[:-1] + [str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()  # per-trajectory seeds: the same file


def test_sigkill_of_a_real_rollout_then_resume(tmp_path, tiny_model):
    """kill -9 a running ``drift rollout`` once it has written a chunk; --resume must match a clean run."""
    flags = [*HF_FLAGS, "--model", tiny_model, "--num-prompts", "120", "--chunk-prompts", "2", "--seed", "1"]
    killed = tmp_path / "killed" / "r.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "drift.cli", "rollout", *flags, "-o", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (killed.exists() and killed.stat().st_size > 0):
            assert proc.poll() is None, "the rollout ended before writing anything"
            assert time.monotonic() < deadline, "no chunk written within 120 s"
            time.sleep(0.005)
        time.sleep(random.Random(0).uniform(0.0, 0.1))  # somewhere inside a later chunk
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = killed.read_bytes()
    lines = partial.count(b"\n")
    assert 4 <= lines < 120 * 2, "kill landed after the run finished; raise --num-prompts"
    assert (killed.parent / "r.config.yaml").exists() and not (killed.parent / "r.summary.json").exists()

    assert main(["rollout", *flags, "-o", str(killed), "--resume"]) == 0
    clean = tmp_path / "clean" / "r.jsonl"
    assert main(["rollout", *flags, "-o", str(clean)]) == 0
    assert killed.read_bytes() == clean.read_bytes()
    assert clean.read_bytes().startswith(partial[: partial.rfind(b"\n") + 1])  # the killed process wrote the same
    # the resumed summary counts the whole run's compute, the killed part included
    resumed = json.loads((killed.parent / "r.summary.json").read_text())
    whole = json.loads((clean.parent / "r.summary.json").read_text())
    assert resumed["new_trajectories"] < whole["new_trajectories"]
    if resumed["uncounted_chunks"] == 0:  # else the kill fell between a chunk's records and its counters
        assert resumed["tokens_generated"] == whole["tokens_generated"] > 0
        # prefill: what the backend ran; a restart starts with an empty prefix cache, so never less
        assert resumed["tokens_prefilled"] >= whole["tokens_prefilled"]


@pytest.mark.parametrize("drop", ["a conversation", "a reply"])
def test_a_backend_that_answers_too_few_is_an_error(drop):
    """A backend returning fewer reply lists than conversations (or an empty list) once ended the
    unanswered episodes silently, as if they had stopped unsolved."""
    from drift import DriftError
    from drift.backends.base import Sampling
    from drift.backends.scripted import ScriptedGenerator
    from drift.config import RolloutConfig
    from drift.options import resolve
    from drift.rollout import env_factory, run_episodes
    from drift.tasks import load_problems

    class Short(ScriptedGenerator):
        def generate(self, conversations, n, sampling, seeds=None):
            replies = super().generate(conversations, n, sampling, seeds)
            return replies[:-1] if drop == "a conversation" else [*replies[:-1], []]

    make_env, _ = env_factory(resolve(RolloutConfig, task="arithmetic", max_turns=2))
    problems = load_problems("arithmetic", split="train", limit=3, seed=0)
    with pytest.raises(DriftError, match="Short returned"):
        run_episodes(problems, make_env, Short(), n=2, max_turns=2, sampling=Sampling(max_new_tokens=8), seed=0)
