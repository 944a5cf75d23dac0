"""The one optimizer step (drift.trainer) on one and on two real processes.

Two-process runs start exactly as the README says (``torchrun --nproc-per-node 2 -m drift.cli
train ...``), with one thread each, and assert what the processes saw: both report a world of 2,
the summary says 2 processes, and the run equals a one-process run step by step (learning rate)
and at the end (weights, SGD).
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from drift.trainer import _has_accelerator  # noqa: E402
from test_train import params, weighted_file  # noqa: E402

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
SGD = ["--dtype", "float32", "--optimizer", "sgd", "--lr", "0.5", "--max-grad-norm", "0", "--warmup-ratio", "0"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(data, out, model, *extra):
    return ["train", str(data), "--out", str(out), "--model", model, *SGD, *extra]


def torchrun(args, nproc=2, **kw):
    cmd = [TORCHRUN, "--nproc-per-node", str(nproc), "--master-port", str(free_port()), "-m", "drift.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc, timeout=240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a hang (a process left out of a collective) fails, not blocks
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout} s:\n{out[-3000:]}")
    return out


def read_log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def load(folder):
    from transformers import AutoModelForCausalLM

    return params(AutoModelForCausalLM.from_pretrained(folder))


def test_two_processes_equal_one_step_by_step_with_an_odd_example_count(tmp_path, tiny_model):
    # 21 examples, batch 4, micro-batch 1: the last step has 1 example, so process 1's slice of it is
    # empty (it must still join the all-reduce), and a decaying schedule shows a schedule run too fast
    from drift.cli import main

    data = weighted_file(tmp_path / "w.jsonl", [0.5, 2.0, 1.0, 0.0, 3.0, 1.5, 0.25] * 3)
    args = ["--batch-size", "4", "--micro-batch-size", "1", "--lr-scheduler", "linear"]
    assert main(train_args(data, tmp_path / "one", tiny_model, *args)) == 0
    proc = torchrun(train_args(data, tmp_path / "two", tiny_model, *args))
    log = finish(proc)
    assert proc.returncode == 0, log[-3000:]
    for rank in (0, 1):
        assert f"process {rank} of 2 (MULTI_CPU, cpu:0, float32)" in log
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["strategy"] == "MULTI_CPU" and summary["dtype"] == "float32"
    assert summary["examples"] == 21 and summary["steps"] == 6
    assert summary["skipped_examples"] == 3  # the weights 0: both processes skip them, and stay in step
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert [e["lr"] for e in two] == pytest.approx([e["lr"] for e in one], abs=1e-12)
    assert [e["lr"] for e in one] == pytest.approx([0.5 * (1 - s / 6) for s in range(6)])
    assert [e["weighted_loss"] for e in two] == pytest.approx([e["weighted_loss"] for e in one], abs=1e-5)
    a, b = load(tmp_path / "one" / "model"), load(tmp_path / "two" / "model")
    moved = load(tiny_model)
    assert any(not torch.allclose(a[k], moved[k]) for k in a), "training did not move the weights"
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k


def test_gradients_sync_once_per_optimizer_step(tmp_path, tiny_model, monkeypatch):
    # DeepSpeed steps its engine on every backward that syncs gradients: with accumulation by hand,
    # that was every micro-batch. Now: only the last micro-batch of each optimizer step syncs.
    from accelerate import Accelerator

    from drift.cli import main

    seen, backward = [], Accelerator.backward

    def spy(self, loss, **kw):
        seen.append(self.sync_gradients)
        return backward(self, loss, **kw)

    monkeypatch.setattr(Accelerator, "backward", spy)
    data = weighted_file(tmp_path / "w.jsonl", [1.0] * 10)
    assert main(train_args(data, tmp_path / "run", tiny_model, "--batch-size", "4", "--micro-batch-size", "1")) == 0
    # steps of 4, 4, 2 examples
    assert seen == [False, False, False, True] * 2 + [False, True]


def test_a_micro_batchs_tensors_are_built_when_it_runs(tmp_path, tiny_model, monkeypatch):
    # device memory holds one micro-batch's inputs (and its prefix tree's mask) at a time, not a step's
    import drift.losses
    import drift.trainer
    from drift.cli import main

    events, collate, logits = [], drift.trainer.collate, drift.losses.completion_logits
    monkeypatch.setattr(drift.trainer, "collate", lambda *a, **kw: events.append("build") or collate(*a, **kw))
    monkeypatch.setattr(drift.losses, "completion_logits", lambda *a: events.append("run") or logits(*a))
    data = weighted_file(tmp_path / "w.jsonl", [1.0] * 6)
    assert main(train_args(data, tmp_path / "run", tiny_model, "--batch-size", "3", "--micro-batch-size", "1")) == 0
    assert events == ["build", "run"] * 6


def test_optimizer_and_schedule_step_once_per_global_batch(tmp_path, tiny_model):
    from drift.config import TrainConfig
    from drift.examples import build_examples
    from drift.models import load_model, load_tokenizer
    from drift.options import resolve
    from drift.records import read_records
    from drift.trainer import Trainer

    cfg = resolve(TrainConfig, micro_batch_size=1, lr=1.0, lr_scheduler="linear", warmup_ratio=0.0)
    tok = load_tokenizer(tiny_model)
    trainer = Trainer(cfg, dtype="float32", out=tmp_path, pad_token_id=tok.pad_token_id)
    trainer.prepare(load_model(tiny_model), total_steps=4)
    steps = []
    inner = trainer.optimizer.optimizer
    original = inner.step
    inner.step = lambda *a, **k: (steps.append(1), original(*a, **k))[1]
    data = weighted_file(tmp_path / "w.jsonl", [1.0] * 3)
    exs = [build_examples(r, tok, index=i)[0] for i, r in enumerate(read_records(data))]
    lrs = [trainer.step(exs, 3.0)["lr"] for _ in range(2)]
    assert len(steps) == 2 and lrs == [1.0, 0.75]


@pytest.mark.skipif(_has_accelerator(), reason="the Trainer runs on the accelerator there")
def test_adamw_on_a_cpu_is_torchs_fused_kernel_and_matches_the_loop(tmp_path, tiny_model):
    """The fused AdamW (drift.trainer._adamw) takes the same steps as torch's per-parameter loop."""
    import torch

    from drift.config import TrainConfig
    from drift.examples import build_examples
    from drift.models import load_model, load_tokenizer
    from drift.options import resolve
    from drift.records import read_records
    from drift.trainer import Trainer

    tok = load_tokenizer(tiny_model)
    data = weighted_file(tmp_path / "w.jsonl", [1.0, 0.5, 2.0])
    exs = [build_examples(r, tok, index=i)[0] for i, r in enumerate(read_records(data))]
    weights = {}
    for fused in (True, None):
        trainer = Trainer(resolve(TrainConfig, lr=1e-3), dtype="float32", out=tmp_path / str(fused), pad_token_id=0)
        trainer.prepare(load_model(tiny_model), total_steps=3)
        assert trainer.optimizer.optimizer.defaults["fused"] is True
        trainer.optimizer.optimizer.param_groups[0]["fused"] = fused  # None: the loop, for reference
        for _ in range(3):
            trainer.step(exs, 3.0)
        weights[fused] = [p.detach().clone() for p in trainer.unwrapped().parameters()]
    moved = max((a - b).abs().max().item() for a, b in zip(weights[True], load_model(tiny_model).parameters()))
    assert moved > 1e-4
    for a, b in zip(weights[True], weights[None]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_kill_one_process_then_resume_gives_the_uninterrupted_weights(tmp_path, tiny_model):
    psutil = pytest.importorskip("psutil")
    data = weighted_file(tmp_path / "w.jsonl", [0.5, 2.0, 1.0, 0.0, 3.0, 1.5, 0.25, 1.0, 2.0] * 2)
    args = [
        "--batch-size",
        "2",
        "--micro-batch-size",
        "1",
        "--epochs",
        "30",
        "--save-steps",
        "5",
        "--save-total-limit",
        "3",
        "--optimizer",
        "adamw",
        "--lr",
        "1e-3",
    ]
    full = torchrun(train_args(data, tmp_path / "full", tiny_model, *args))
    log = finish(full)
    assert full.returncode == 0, log[-3000:]

    killed = torchrun(train_args(data, tmp_path / "killed", tiny_model, *args))
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 180
    while not (ckpts / "step-0000010").exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = psutil.Process(killed.pid).children()
    assert len(workers) == 2 and killed.poll() is None, "the run ended before it could be killed"
    workers[-1].kill()  # kill -9 one of the two training processes
    log = finish(killed)
    assert killed.returncode != 0  # the launcher noticed, stopped the other process, and failed
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in workers)
    assert not (tmp_path / "killed" / "model").exists()

    resumed = torchrun(train_args(data, tmp_path / "killed", tiny_model, *args, "--resume"))
    log = finish(resumed)
    assert resumed.returncode == 0, log[-3000:]
    resumed_at = re.search(r"resumed from \S+step-(\d{7}) at step (\d+)\n", log)
    assert resumed_at and int(resumed_at[1]) == int(resumed_at[2]) >= 10, log[-2000:]  # not started over
    for rank in (0, 1):
        assert f"process {rank} of 2 (MULTI_CPU, cpu:0, float32)" in log
    summary = json.loads((tmp_path / "killed" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["strategy"] == "MULTI_CPU"
    steps = [e["step"] for e in read_log(tmp_path / "killed")]
    assert steps == list(range(1, 271))  # 18 examples / batch 2 x 30 epochs, each step logged once
    a, b = load(tmp_path / "full" / "model"), load(tmp_path / "killed" / "model")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_a_command_ends_its_process_group_before_the_process_exits(tmp_path, tiny_model):
    """A process that exits with its gloo group alive may abort at exit ("terminate called without
    an active exception", SIGABRT; once in CI, once in 52 runs here): a finished run then fails under
    torchrun. Each process runs two commands, which share one group of two, and says at exit (after
    drift's exit handler, registered later, has run) whether the group is still up."""
    data = weighted_file(tmp_path / "w.jsonl", [1.0, 0.5, 2.0, 1.0])
    script = tmp_path / "cli.py"
    script.write_text(
        "import atexit, os, sys\n"
        "import torch.distributed as dist\n"
        "from drift.cli import main\n"
        "rank = os.environ['RANK']\n"
        "atexit.register(lambda: print(f'rank {rank} at exit: group up {dist.is_initialized()}', flush=True))\n"
        "for run in ('a', 'b'):\n"
        "    rc = main([*sys.argv[2:], '--out', sys.argv[1] + run])\n"
        "    print(f'rank {rank}, run {run}: rc {rc}, group up {dist.is_initialized()}', flush=True)\n"
    )
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["train", str(data), "--model", tiny_model, *SGD, "--batch-size", "2", "--micro-batch-size", "1"]
    proc = subprocess.Popen(
        [*cmd, str(tmp_path / "run-"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log = finish(proc)
    assert proc.returncode == 0, log[-3000:]
    for run in ("a", "b"):
        summary = json.loads((tmp_path / f"run-{run}" / "train_summary.json").read_text())
        assert summary["processes"] == 2 and summary["strategy"] == "MULTI_CPU"  # a group of two
        for rank in (0, 1):
            assert f"rank {rank}, run {run}: rc 0, group up True" in log, log[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} at exit: group up False" in log, log[-3000:]


@pytest.mark.parametrize("max_grad_norm, written, expected", [(0.3, "auto", 0.3), (0.0, "auto", 0.0), (1.0, None, 1.0)])
def test_deepspeed_clips_at_max_grad_norm(max_grad_norm, written, expected):
    """Under DeepSpeed, accelerate's clip_grad_norm_ only measures; the engine clips at the config's
    gradient_clipping, which accelerate fills with 1.0 where it says auto. --max-grad-norm 0.3 (or 0,
    off) once clipped at 1.0 there."""
    from drift.config import TrainConfig
    from drift.trainer import fill_deepspeed_config

    opts = TrainConfig(max_grad_norm=max_grad_norm, micro_batch_size=4)
    ds = {} if written is None else {"gradient_clipping": written}
    accumulation = fill_deepspeed_config(ds, opts, processes=2, batch_size=16)
    assert ds["gradient_clipping"] == expected and ds["train_micro_batch_size_per_gpu"] == 4 and accumulation == 2


def test_deepspeed_config_that_clips_elsewhere_is_refused():
    from drift import DriftError
    from drift.config import TrainConfig
    from drift.trainer import fill_deepspeed_config

    with pytest.raises(DriftError, match=r"gradient_clipping 1\.0 but --max-grad-norm is 0\.3"):
        fill_deepspeed_config({"gradient_clipping": 1.0}, TrainConfig(max_grad_norm=0.3), processes=1, batch_size=8)
    ds = {"gradient_clipping": 1.0}  # agreeing values are fine
    fill_deepspeed_config(ds, TrainConfig(max_grad_norm=1.0), processes=1, batch_size=8)
    assert ds["gradient_clipping"] == 1.0


@pytest.mark.skipif(_has_accelerator(), reason="float16 autocast is a GPU's; this checks a CPU-only machine")
def test_float16_training_on_a_cpu_is_refused(tmp_path):
    """accelerate runs no fp16 autocast on a CPU: the run trained in float32 and its summary said float16."""
    from drift import DriftError
    from drift.config import TrainConfig
    from drift.trainer import Trainer

    with pytest.raises(DriftError, match=r"float16.*bfloat16 or float32"):
        Trainer(TrainConfig(), dtype="float16", out=tmp_path, pad_token_id=0)
    assert Trainer(TrainConfig(), dtype="bfloat16", out=tmp_path, pad_token_id=0).accelerator.mixed_precision == "bf16"


def test_each_process_draws_its_own_dropout(tmp_path, tiny_model):
    """Every process once seeded torch with --seed alone: under dropout (LoRA's, a model's own) all
    processes drew the same masks, in the same order, for different examples. After the model is
    built (identical on every process), process r seeds torch with seed + r; data order has its own
    seeded generator and does not change."""
    from rank_spy import CLI, SPY, read_spy

    data = weighted_file(tmp_path / "w.jsonl", [1.0, 0.5, 2.0, 1.0] * 2)
    script, spy = tmp_path / "cli.py", tmp_path / "spy"
    script.write_text("import sys\n" + SPY + CLI)
    spy.mkdir()
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DRIFT_TEST_SPY": str(spy)}
    args = train_args(data, tmp_path / "two", tiny_model, "--seed", "11", "--lora-r", "4", "--lora-dropout", "0.5")
    proc = subprocess.Popen([*cmd, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = finish(proc)
    assert proc.returncode == 0, log[-3000:]
    seen = read_spy(spy)
    seeds = {rank: {r["torch_seed"] for r in records if r["call"] == "collate"} for rank, records in seen.items()}
    assert seeds == {0: {11}, 1: {12}}
    batches = {rank: [r["batch"] for r in records if r["call"] == "split"] for rank, records in seen.items()}
    assert batches[0] == batches[1]  # the same data order on both
