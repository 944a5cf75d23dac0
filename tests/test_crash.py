"""kill -9 and resume: ``drift train`` and ``drift rl`` end with the same parameters as a run never killed.

Each case starts the real command (``python -m drift.cli``, tiny model, one thread) with a
checkpoint every step, waits for a seeded random checkpoint k, sleeps a random delay, SIGKILLs the
process wherever it is (mid-step, mid-checkpoint, mid-log-line), then runs the same command with
``--resume`` and compares every parameter with an uninterrupted run (``torch.equal``) and the log
with one entry per step. (Rollout crash tests live in tests/test_rollout.py.)
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from drift.records import write_records  # noqa: E402
from factories import make_record  # noqa: E402

ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
KILL_SEEDS = [0, 1, 2]
TRAIN_STEPS, RL_STEPS = 24, 10


def drift(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "drift.cli", *args],
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_at_random_point(args: list[str], checkpoint_step, total: int, seed: int) -> tuple[int, float]:
    """Start ``drift *args`` and SIGKILL it at a seeded random point after its first checkpoint.

    The point: once ``checkpoint_step()`` (the newest checkpoint's step, 0 for none) reaches k,
    drawn from 1..total-2, plus a delay drawn from [0, 50 ms), so the kill lands anywhere in the
    next step: forward, backward, optimizer, log line or checkpoint write. Returns ``(k, delay)``.
    """
    rng = random.Random(seed)
    k, delay = rng.randint(1, total - 2), rng.uniform(0.0, 0.05)
    proc = subprocess.Popen(
        [sys.executable, "-m", "drift.cli", *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while checkpoint_step() < k:
            assert proc.poll() is None, f"exited before checkpoint {k}: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, f"no checkpoint {k} after 300 s"
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return k, delay


def model_params(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def newest_checkpoint(out: Path) -> int:
    """The step of the newest complete checkpoint in a run folder (0 for none)."""
    done = [p.name for p in (out / "checkpoints").glob("step-*") if not p.name.endswith(".tmp")]
    return int(max(done).removeprefix("step-")) if done else 0


def log_steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


# -- drift train -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_setup(tmp_path_factory, tiny_model):
    """Weighted data, the command line, and the parameters of an uninterrupted run."""
    root = tmp_path_factory.mktemp("crash-train")
    recs = [
        make_record(
            f"p{i // 4}",
            i % 4,
            [str(i % 7), "5"][: 1 + i % 2],
            first_correct=None,
            weight=0.5 + (i % 3),
            question=f"What is {i}+{i % 5}?",
        )
        for i in range(16)
    ]
    data = root / "weighted.jsonl"
    write_records(data, recs)

    def args(out: Path) -> list[str]:
        return [
            "train",
            str(data),
            "--out",
            str(out),
            "--model",
            tiny_model,
            "--dtype",
            "float32",
            "--batch-size",
            "4",
            "--micro-batch-size",
            "2",
            "--max-steps",
            str(TRAIN_STEPS),
            "--save-steps",
            "1",
            "--lr",
            "1e-3",
            "--warmup-ratio",
            "0.1",
            "--seed",
            "3",
        ]

    drift(*args(root / "full"))
    return args, model_params(root / "full" / "model")


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_train_killed_and_resumed_equals_uninterrupted(tmp_path, train_setup, seed):
    args, full = train_setup
    out = tmp_path / "run"
    k, _ = kill_at_random_point(args(out), lambda: newest_checkpoint(out), TRAIN_STEPS, seed)
    assert not (out / "train_summary.json").exists()
    j = newest_checkpoint(out)
    resumed = drift(*args(out), "--resume")
    assert j >= k and f"at step {j}" in resumed.stdout and f"step-{j:07d}" in resumed.stdout, resumed.stdout[-500:]
    assert_same_params(full, model_params(out / "model"))
    assert log_steps(out / "train_log.jsonl") == list(range(1, TRAIN_STEPS + 1))  # no step logged twice


# -- drift rl --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rl_setup(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("crash-rl")

    def args(out: Path) -> list[str]:
        return [
            "rl",
            "--model",
            tiny_model,
            "--out",
            str(out),
            "--steps",
            str(RL_STEPS),
            "--prompts-per-step",
            "2",
            "--group-size",
            "2",
            "--max-new-tokens",
            "4",
            "--max-turns",
            "2",
            "--task-options",
            "digits=1",
            "--num-prompts",
            "20",
            "--dtype",
            "float32",
            "--save-steps",
            "1",
            "--lr",
            "1e-3",
            "--seed",
            "5",
        ]

    drift(*args(root / "full"))
    return args, model_params(root / "full" / "model")


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_rl_killed_and_resumed_equals_uninterrupted(tmp_path, rl_setup, seed):
    args, full = rl_setup
    out = tmp_path / "run"
    k, _ = kill_at_random_point(args(out), lambda: newest_checkpoint(out), RL_STEPS, seed)
    assert not (out / "rl_summary.json").exists()
    j = newest_checkpoint(out)
    resumed = drift(*args(out), "--resume")
    assert j >= k and f"at step {j}" in resumed.stdout and f"step-{j:07d}" in resumed.stdout, resumed.stdout[-500:]
    assert_same_params(full, model_params(out / "model"))
    assert log_steps(out / "rl_log.jsonl") == list(range(1, RL_STEPS + 1))


# -- SIGTERM ---------------------------------------------------------------------------------


def test_sigterm_unwinds_like_ctrl_c(tmp_path, tiny_model):
    """A terminated rollout closes its generator (a vLLM engine's workers with it) and says so,
    instead of dying where it stands; what it wrote is resumable."""
    out = tmp_path / "rollouts.jsonl"
    args = [
        "rollout",
        "--model",
        tiny_model,
        "--out",
        str(out),
        "--num-prompts",
        "64",
        "--n",
        "2",
        "--chunk-prompts",
        "2",
        "--max-new-tokens",
        "8",
        "--dtype",
        "float32",
        "--task-options",
        "digits=1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "drift.cli", *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "drift rollout: interrupted" in err, err[-2000:]
    drift(*args, "--resume")
    assert len(out.read_text().splitlines()) == 128
