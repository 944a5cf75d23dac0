"""Online RL: the loss on a hand-built group, tiny runs (one and two processes), resume, snapshots."""

import json
import os

import pytest

from drift.config import RLConfig
from factories import make_record


def test_policy_gradient_loss_on_a_hand_built_group(tiny_model):
    torch = pytest.importorskip("torch")
    from drift.examples import build_examples, collate
    from drift.losses import weighted_nll_terms
    from drift.models import load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    recs = [make_record("p", 0, ["5"], 1), make_record("p", 1, ["4", "5"], 2), make_record("p", 2, ["4", "4"])]
    advantages = [1.2, 0.3, -1.5]
    exs = [build_examples(r, tok, weight=a)[0] for r, a in zip(recs, advantages)]
    terms, stats = weighted_nll_terms(model, collate(exs, tok.pad_token_id))
    loss = terms.sum() / 3
    # by hand: -sum_i A_i * (token-mean log p of completion i) / 3, each sequence run alone
    expected = 0.0
    for e, a in zip(exs, advantages):
        ids = torch.tensor([e.input_ids])
        labels = ids.clone()
        labels[:, : e.n_prompt] = -100
        expected += a * model(input_ids=ids, labels=labels).loss.item() / 3
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert "kl_sum" not in stats
    # against itself the KL penalty is exactly zero
    with_kl, stats = weighted_nll_terms(model, collate(exs, tok.pad_token_id), ref_model=model, kl_coef=0.1)
    assert abs(stats["kl_sum"].item()) < 1e-6 and torch.allclose(with_kl, terms, atol=1e-6)


@pytest.fixture
def even_length_is_right(monkeypatch):
    """A rigged verifier: an answer is right when it has an even number of characters. The tiny
    random model then solves some episodes and not others: groups with spread, advantages != 0."""
    from drift import verifiers

    monkeypatch.setitem(verifiers.VERIFIERS, "even", lambda prediction, gold: len(prediction) % 2 == 0)


def test_drift_rl_moves_the_policy_counts_compute_and_resumes(tmp_path, tiny_model, even_length_is_right, capsys):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from drift.cli import main
    from drift.compute import flops_as_run

    out = tmp_path / "rl"
    args = [
        "rl",
        "--model",
        tiny_model,
        "--out",
        str(out),
        "--steps",
        "2",
        "--prompts-per-step",
        "2",
        "--group-size",
        "4",
        "--max-new-tokens",
        "4",
        "--max-turns",
        "2",
        "--task-options",
        "digits=1",
        "--num-prompts",
        "20",
        "--answer-mode",
        "lenient",
        "--verifier",
        "even",
        "--dtype",
        "float32",
        "--save-steps",
        "1",
        "--lr",
        "1e-2",
        "--optimizer",
        "sgd",
        "--max-grad-norm",
        "0",
        "--snapshot-steps",
        "2",
    ]
    assert main(args) == 0
    summary = json.loads((out / "rl_summary.json").read_text())
    log = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 2 and summary["trajectories"] == 16 and len(log) == 2
    assert summary["processes"] == 1 and summary["dtype"] == "float32" and summary["device"] == "cpu"
    # some episodes solved, some not: the advantages are not all zero, so the policy must move
    assert 0 < log[0]["solved"] < 1 or 0 < log[1]["solved"] < 1
    # at most 2 rounds x 8 trajectories x 2 turns x 4 tokens
    assert 0 < summary["generated_tokens"] <= 2 * 8 * 2 * 4
    assert summary["trained_tokens"] > 0 and summary["generation_seconds"] > 0
    # a round's samples share their prompts: the training forwards run them once (drift.packing)
    assert 0 < summary["trained_forwarded_tokens"] < summary["trained_tokens"]
    assert summary["flops_as_run"] == flops_as_run(summary["parameters"], summary) < summary["flops"]
    assert log[-1]["trained_forwarded_tokens"] == summary["trained_forwarded_tokens"]
    assert log[-1]["generated_tokens"] == summary["generated_tokens"]
    assert 0 < summary["prefilled_tokens"] == log[-1]["prefilled_tokens"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    a = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert any(not torch.equal(base[k], a[k]) for k in a), "the policy did not move"
    # a run killed after its round-1 checkpoint, resumed: the same model, the log without duplicates
    crashed = tmp_path / "crashed"
    shutil.copytree(out, crashed)
    shutil.rmtree(crashed / "model")
    shutil.rmtree(crashed / "checkpoints" / "step-0000002", ignore_errors=True)
    (crashed / "rl_summary.json").unlink()
    (crashed / "snapshots" / "round-00002" / "stale").write_text("from the run that died")  # round 2 is redone
    args[args.index(str(out))] = str(crashed)
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert f"resumed from {crashed / 'checkpoints' / 'step-0000001'} at step 1" in capsys.readouterr().out
    assert not (crashed / "snapshots" / "round-00002" / "stale").exists()
    assert [json.loads(line)["step"] for line in (crashed / "rl_log.jsonl").read_text().splitlines()] == [1, 2]
    b = AutoModelForCausalLM.from_pretrained(crashed / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the compute of round 1 comes back from the checkpoint, counted once: the token counters equal
    # the uninterrupted run's (seconds differ)
    resumed = json.loads((crashed / "rl_summary.json").read_text())
    counters = [k for k in summary if k.endswith("_tokens")] + ["flops", "flops_as_run"]
    assert len(counters) >= 6 and {k: resumed[k] for k in counters} == {k: summary[k] for k in counters}
    # and the resumed round 2 is not the round 1 again: without the checkpoint, the result differs
    fresh = tmp_path / "one-round"
    args[args.index(str(crashed))] = str(fresh)
    assert main([*args[: args.index("--steps") + 1], "1", *args[args.index("--steps") + 2 :]]) == 0
    c = AutoModelForCausalLM.from_pretrained(fresh / "model").state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_iterated_drift_reuses_each_round(tmp_path, tiny_model):
    from drift.cli import main

    out = tmp_path / "iter"
    assert (
        main(
            [
                "rl",
                "--model",
                tiny_model,
                "--out",
                str(out),
                "--algorithm",
                "drift",
                "--steps",
                "1",
                "--epochs-per-round",
                "2",
                "--prompts-per-step",
                "2",
                "--group-size",
                "2",
                "--max-new-tokens",
                "4",
                "--max-turns",
                "1",
                "--task-options",
                "digits=1",
                "--num-prompts",
                "4",
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    summary = json.loads((out / "rl_summary.json").read_text())
    assert summary["algorithm"] == "drift" and summary["steps"] == 1 and summary["trajectories"] == 4
    (entry,) = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    # weighted SFT needs no ratio: two passes over the round, nothing scored, no clipping
    assert entry["updates"] in (0, 2) and entry["scored_tokens"] == 0 and entry["clipped_share"] is None


def test_grpo_with_minibatches_clips_snapshots_and_stops_on_a_flop_budget(tmp_path, tiny_model, even_length_is_right):
    """The recipe people run: several clipped minibatch updates per round. Every round is scored
    once (old log-probs), takes epochs x minibatches steps, and reports how often the clip acted;
    snapshots are saved along the way; a FLOP budget ends the run early, and FLOPs follow drift.compute."""
    from drift.cli import main
    from drift.compute import count_parameters, flops

    flags = ["rl", "--model", tiny_model, "--steps", "3", "--prompts-per-step", "2", "--group-size", "4",
             "--max-new-tokens", "4", "--max-turns", "2", "--task-options", "digits=1", "--num-prompts", "20",
             "--answer-mode", "lenient", "--verifier", "even", "--dtype", "float32", "--lr", "5e-2",
             "--epochs-per-round", "2", "--minibatches", "2", "--clip-ratio", "0.1", "--snapshot-steps", "1,2",
             "--lr-scheduler", "constant"]  # fmt: skip
    out = tmp_path / "ppo"
    assert main([*flags, "--out", str(out)]) == 0
    log = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    summary = json.loads((out / "rl_summary.json").read_text())
    assert [e["step"] for e in log] == [1, 2, 3]
    trained = [e for e in log if e["trained_trajectories"]]
    assert trained, "no round had an advantage to learn from"
    assert all(e["updates"] == 4 and 0 <= e["clipped_share"] <= 1 for e in trained)
    assert summary["scored_tokens"] > 0 and summary["trained_tokens"] > 0
    assert any(e["clipped_share"] > 0 for e in trained), "a large lr and a small clip: the clip must act"
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["round-00001", "round-00002"]
    n = count_parameters(out / "model")
    assert summary["parameters"] == n and summary["flops"] == flops(
        n, **{k: summary[f"{k}_tokens"] for k in ("prefilled", "generated", "scored", "reference", "trained")}
    )
    # a budget below one round's compute: the run stops after its first round
    budget = log[0]["flops"] / 2
    assert main([*flags, "--out", str(tmp_path / "budget"), "--max-flops", str(budget)]) == 0
    stopped = json.loads((tmp_path / "budget" / "rl_summary.json").read_text())
    assert stopped["steps"] == 1 and stopped["flops"] >= budget


def test_two_processes_sample_their_shares_and_count_every_token(tmp_path, tiny_model):
    """drift rl under torchrun with 2 processes: each samples its share of a round (3 prompts: one
    process gets 1), the summary says 2 processes, and the round's records and token counts are
    the whole round's: the same trajectories and generated tokens as a one-process run."""
    from drift.cli import main
    from test_trainer import finish, torchrun

    flags = ["--model", tiny_model, "--steps", "1", "--prompts-per-step", "3", "--group-size", "2",
             "--max-new-tokens", "4", "--max-turns", "2", "--task-options", "digits=1", "--num-prompts", "6",
             "--dtype", "float32", "--seed", "3"]  # fmt: skip
    proc = torchrun(["rl", "--out", str(tmp_path / "two"), *flags])
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    for rank in (0, 1):
        assert f"process {rank} of 2 (MULTI_CPU, cpu:0, float32)" in out, out[-2000:]
    two = json.loads((tmp_path / "two" / "rl_summary.json").read_text())
    assert main(["rl", "--out", str(tmp_path / "one"), *flags]) == 0
    one = json.loads((tmp_path / "one" / "rl_summary.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["trajectories"] == one["trajectories"] == 6
    # per-trajectory seeds: the same replies whichever process sampled them; prefill differs
    # (what each process's cache could share), generation does not
    assert two["generated_tokens"] == one["generated_tokens"] > 0
    assert two["prefilled_tokens"] > 0


def _rl_flags(tiny_model, *extra):
    return ["rl", "--model", tiny_model, "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "4",
            "--max-turns", "2", "--task-options", "digits=1", "--num-prompts", "20", "--answer-mode", "lenient",
            "--verifier", "even", "--lr-scheduler", "constant", *extra]  # fmt: skip


@pytest.mark.parametrize("algorithm", ["drift", "grpo"])
def test_a_kl_penalty_runs_on_every_micro_batch(tmp_path, tiny_model, even_length_is_right, algorithm):
    """The reference forward's autocast is entered once per micro-batch (a one-shot context once
    crashed the second one), and every trained token is also forwarded through the reference."""
    from drift.cli import main

    out = tmp_path / "kl"
    flags = _rl_flags(tiny_model, "--algorithm", algorithm, "--steps", "2", "--kl-coef", "0.05", "--dtype",
                      "bfloat16", "--micro-batch-size", "1", "--epochs-per-round", "2", "--out", str(out))  # fmt: skip
    assert main(flags) == 0
    log = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    summary = json.loads((out / "rl_summary.json").read_text())
    assert any(e["kl"] is not None for e in log) and all(e["kl"] >= 0 for e in log if e["kl"] is not None)
    assert summary["reference_tokens"] == summary["trained_tokens"] > 0
    assert summary["reference_forwarded_tokens"] == summary["trained_forwarded_tokens"] > 0


def test_old_log_probs_are_counted_as_forwarded(tmp_path, tiny_model, even_length_is_right):
    """grpo's scoring of the old log-probs runs the update's packed micro-batches: counted as run,
    it costs the tokens forwarded, fewer than the examples' tokens where a group shares its prompt."""
    from drift.cli import main
    from drift.compute import flops_as_run

    out = tmp_path / "grpo"
    flags = _rl_flags(tiny_model, "--algorithm", "grpo", "--steps", "1", "--epochs-per-round", "2",
                      "--micro-batch-size", "8", "--dtype", "float32", "--out", str(out))  # fmt: skip
    assert main(flags) == 0
    summary = json.loads((out / "rl_summary.json").read_text())
    assert 0 < summary["scored_forwarded_tokens"] < summary["scored_tokens"]
    assert summary["reference_tokens"] == summary["reference_forwarded_tokens"] == 0  # no KL penalty
    assert summary["flops_as_run"] == flops_as_run(summary["parameters"], summary) < summary["flops"]


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_old_log_probs_are_scored_as_the_updates_see_them(tmp_path, tiny_model, even_length_is_right, dropout):
    """In bf16 a batch's shape changes the rounding: the old log-probs are taken in the very
    micro-batches the updates use, so a policy that has not moved (lr 1e-30) has a ratio of exactly
    1 at every update, and a clip of 1e-6 never acts. The same with a model that has dropout: the
    old log-probs are scored without it, and drift rl trains without it (as TRL's GRPO)."""
    import shutil

    from drift.cli import main

    if dropout:
        model = tmp_path / "dropout-model"
        shutil.copytree(tiny_model, model)
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "attention_dropout": dropout}))
        tiny_model = str(model)
    out = tmp_path / "bf16"
    flags = _rl_flags(tiny_model, "--steps", "3", "--dtype", "bfloat16", "--lr", "1e-30", "--clip-ratio", "1e-6",
                      "--epochs-per-round", "2", "--minibatches", "2", "--micro-batch-size", "2", "--max-turns",
                      "3", "--out", str(out))  # fmt: skip
    assert main(flags) == 0
    log = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    trained = [e for e in log if e["updates"]]
    assert trained and all(e["clipped_share"] == 0.0 for e in trained), [e["clipped_share"] for e in log]


def test_minibatches_are_cut_once_per_round_into_m_near_equal_parts():
    from drift.examples import plan_minibatches

    for n, m in ((9, 4), (5, 4), (64, 2), (3, 5), (0, 4)):
        parts, orders = plan_minibatches(n, m, seed=3, epochs=3)
        assert len(orders) == 3
        assert len(parts) == min(n, m) and {len(p) for p in parts} <= {n // m, -(-n // m)}
        assert sorted(i for p in parts for i in p) == list(range(n))
        assert all(sorted(o) == list(range(len(parts))) for o in orders)  # each pass takes every part once
    parts, orders = plan_minibatches(64, 8, seed=3, epochs=4)
    assert len({tuple(o) for o in orders}) > 1  # taken in another order


def test_iterated_drift_does_not_forward_negligible_weights(tmp_path, tiny_model, even_length_is_right):
    """As drift train: a failed trajectory next to a solved one weighs ~e^-10 (beta 0.1) and is not
    forwarded; the same run with --skip-weight-share none forwards (and counts) every example."""
    from drift.cli import main

    logs = {}
    for share in ("1e-4", "none"):
        out = tmp_path / share
        flags = _rl_flags(tiny_model, "--algorithm", "drift", "--steps", "2", "--dtype", "float32",
                          "--skip-weight-share", share, "--out", str(out))  # fmt: skip
        assert main(flags) == 0
        logs[share] = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    assert sum(e["skipped_examples"] for e in logs["1e-4"]) > 0
    assert all(e["skipped_examples"] == 0 for e in logs["none"])
    assert logs["1e-4"][-1]["trained_tokens"] < logs["none"][-1]["trained_tokens"]


def test_fewer_prompts_than_a_round_takes_are_refused(tmp_path, tiny_model):
    """A round would sample one prompt twice with the same seeds: twin trajectories, one merged group."""
    from drift import DriftError
    from drift.rl import run_rl

    cfg = RLConfig(model=tiny_model, out=str(tmp_path / "rl"), num_prompts=3, prompts_per_step=4, steps=1,
                   group_size=2, max_new_tokens=4, max_turns=1, dtype="float32")  # fmt: skip
    with pytest.raises(DriftError, match="gave 3 prompts, fewer than --prompts-per-step 4"):
        run_rl(cfg)


@pytest.mark.parametrize("sampling", [{"temperature": 0.7}, {"top_p": 0.9}, {"temperature": 0.0}])
def test_grpo_samples_from_the_policy_it_trains(tmp_path, tiny_model, sampling):
    """grpo's gradient, ratio and KL take the policy's log-probs as they are (temperature 1, no top-p):
    samples drawn otherwise would train a policy other than the one that drew them. Iterated DRIFT
    (weighted SFT on the samples) may sample as it likes."""
    import dataclasses

    from drift import DriftError
    from drift.rl import run_rl

    cfg = RLConfig(model=tiny_model, out=str(tmp_path / "rl"), steps=1, prompts_per_step=2, group_size=2,
                   max_new_tokens=4, max_turns=1, dtype="float32", **sampling)  # fmt: skip
    with pytest.raises(DriftError, match="temperature 1 and top_p 1"):
        run_rl(cfg)
    assert not (tmp_path / "rl").exists()
    run_rl(dataclasses.replace(cfg, algorithm="drift"))
    assert (tmp_path / "rl" / "rl_summary.json").exists()


EVEN_CLI = """
import sys
from drift import verifiers
from drift.cli import main
verifiers.VERIFIERS["even"] = lambda prediction, gold: len(prediction) % 2 == 0
sys.exit(main(sys.argv[1:]))
"""


def test_clipped_grpo_with_a_kl_term_on_two_processes_trains_as_one(tmp_path, tiny_model, even_length_is_right):
    """torchrun, 2 processes, 2 passes x 2 clipped minibatches with a KL term, micro-batches of 8:
    each step's few examples all go to process 0 and process 1 runs a filler, which once had no old
    log-probs (a crash). The weights equal one process's: the same trajectories (per-trajectory
    seeds), the same whole-batch gradient, nothing from the filler (no completion tokens). What each
    process cut and forwarded is recorded (rank_spy), so that the filler path is seen to run."""
    import subprocess

    import torch

    from rank_spy import SPY, read_spy
    from test_trainer import TORCHRUN, finish, free_port, load

    flags = _rl_flags(tiny_model, "--algorithm", "grpo", "--steps", "2", "--epochs-per-round", "2", "--minibatches",
                      "2", "--clip-ratio", "0.2", "--kl-coef", "0.05", "--micro-batch-size", "8", "--seed", "3",
                      "--optimizer", "sgd", "--lr", "0.5", "--max-grad-norm", "0", "--dtype", "float32")  # fmt: skip
    script, spy = tmp_path / "even_cli.py", tmp_path / "spy"
    script.write_text(SPY + EVEN_CLI)
    spy.mkdir()
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DRIFT_TEST_SPY": str(spy)}
    proc = subprocess.Popen([*cmd, *flags, "--out", str(tmp_path / "two")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    log = finish(proc, timeout=400)
    assert proc.returncode == 0, log[-3000:]
    from drift.cli import main

    assert main([*flags, "--out", str(tmp_path / "one")]) == 0
    two, one = (json.loads((tmp_path / n / "rl_summary.json").read_text()) for n in ("two", "one"))
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["generated_tokens"] == one["generated_tokens"] and two["trained_tokens"] == one["trained_tokens"] > 0
    a, b, start = load(tmp_path / "one" / "model"), load(tmp_path / "two" / "model"), load(tiny_model)
    assert any(not torch.allclose(a[k], start[k]) for k in a), "training did not move the weights"
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    # what each process saw: 2 rounds of 2 minibatches, each scored once (the ratio's denominator)
    # and updated twice; every minibatch (8 trajectories / 2) fits in one micro-batch of 8, so
    # process 0 takes all of it and process 1, whose run of 8 neighbours is empty, a filler
    seen = read_spy(tmp_path / "spy")
    assert sorted(seen) == [0, 1]
    splits = {rank: [c for c in calls if c["call"] == "split"] for rank, calls in seen.items()}
    updates = sum(e["updates"] for e in map(json.loads, (tmp_path / "two" / "rl_log.jsonl").read_text().splitlines()))
    assert updates == 2 * 2 * 2
    for rank in (0, 1):
        assert [c["by"] for c in splits[rank]].count("completion_logprobs") == 2 * 2
        assert [c["by"] for c in splits[rank]].count("step") == updates
    for on_0, on_1 in zip(splits[0], splits[1], strict=True):
        assert on_0["batch"] == on_1["batch"] and on_0["by"] == on_1["by"]  # the same global batch on both
        assert 0 < len(on_0["batch"]) <= 8
        assert sorted(i for mb in on_0["mine"] for i in mb) == sorted(on_0["batch"])  # process 0: all of it
        assert on_1["mine"] == [[-1]]  # process 1: one filler
    forwarded = [c for c in seen[1] if c["call"] == "collate"]
    assert len(forwarded) == 2 * 2 + updates and all(c["indices"] == [-1] and c["tokens"] == 0 for c in forwarded)
    # in the clipped updates the filler carries (empty) old log-probs: the path that once crashed
    assert [c["old_logp"] for c in forwarded if c["by"] == "step"] == [True] * updates


@pytest.mark.parametrize("n, per", [(10, 8), (16, 8), (7, 3)])
def test_rounds_take_prompts_pass_by_pass(n, per):
    """Every n consecutive prompt slots of the round stream hold each prompt once (a pass), also when
    n is not a multiple of the round's size (a round once wrapped into its own pass's start); the
    same seed gives the same rounds."""
    from types import SimpleNamespace

    from drift.rl import _round_prompts

    cfg = SimpleNamespace(prompts_per_step=per, seed=5)
    stream = [p for step in range(3 * n) for p in _round_prompts(list(range(n)), step, cfg)]
    for start in range(0, len(stream) - n + 1, n):
        assert sorted(stream[start : start + n]) == list(range(n)), start
    assert stream[:n] != list(range(n)) and _round_prompts(list(range(n)), 4, cfg) == stream[4 * per : 5 * per]


@pytest.mark.parametrize("n, per", [(10, 8), (7, 3), (9, 9), (5, 4)])
def test_a_round_never_holds_a_prompt_twice(n, per):
    """A round that straddles two passes took the end of one and the start of the next, which could
    hold the same prompt: two groups with one prompt_id and the same seeds (identical trajectories),
    merged into one group of 2G by the advantages."""
    from types import SimpleNamespace

    from drift.rl import _round_prompts

    for seed in range(30):
        cfg = SimpleNamespace(prompts_per_step=per, seed=seed)
        for step in range(4 * n):
            chosen = _round_prompts(list(range(n)), step, cfg)
            assert len(set(chosen)) == per, (seed, step, chosen)


def test_a_round_with_nothing_to_learn_still_advances_the_schedule(tmp_path, tiny_model, monkeypatch):
    """The learning-rate schedule is laid out for epochs x minibatches updates a round. A round that
    takes fewer (its every group dropped by the weighting, or fewer examples than minibatches)
    moves the schedule on by the updates it did not take, so that later rounds learn at the rate
    the schedule gives their round, and the run ends where the schedule does."""
    import torch

    from drift import verifiers
    from drift.cli import main

    monkeypatch.setitem(verifiers.VERIFIERS, "never", lambda prediction, gold: False)
    flags = ["rl", "--model", tiny_model, "--algorithm", "drift", "--all-fail", "drop", "--steps", "3",
             "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4", "--max-turns", "1",
             "--task-options", "digits=1", "--num-prompts", "4", "--verifier", "never", "--dtype", "float32",
             "--epochs-per-round", "2", "--minibatches", "3", "--save-steps", "2"]  # fmt: skip
    assert main([*flags, "--out", str(tmp_path / "rl")]) == 0
    log = [json.loads(line) for line in (tmp_path / "rl" / "rl_log.jsonl").read_text().splitlines()]
    assert [e["updates"] for e in log] == [0, 0, 0]  # every group failed, and was dropped
    (checkpoint,) = (tmp_path / "rl" / "checkpoints").iterdir()
    scheduler = torch.load(checkpoint / "scheduler.bin", weights_only=False)
    assert scheduler["last_epoch"] == 2 * 2 * 3  # two rounds of 2 passes over 3 minibatches


@pytest.mark.parametrize("algorithm", ["grpo", "drift"])
def test_each_round_samples_the_current_policy_and_is_kept(tmp_path, tiny_model, even_length_is_right, algorithm):
    """rounds/round-N.jsonl holds what round N sampled, with its return and coefficient; round 2's
    episodes are those a fresh generator draws from the policy after round 1 (saved as a snapshot),
    with the round's seeds, token for token in float32: the sampler reads nothing computed with
    older weights (a fused AdamW step once left the kept KV caches of round 1 in use)."""
    from drift.backends.base import Sampling
    from drift.backends.hf import HFGenerator
    from drift.cli import main
    from drift.options import resolve
    from drift.records import read_records
    from drift.rl import _round_prompts
    from drift.rollout import env_factory, run_episodes
    from drift.tasks import load_problems

    flags = dict(model=tiny_model, algorithm=algorithm, steps=2, prompts_per_step=2, group_size=3, max_new_tokens=4,
                 max_turns=2, task_options={"digits": 1}, num_prompts=8, answer_mode="lenient", verifier="even",
                 dtype="float32", lr=5e-2, snapshot_steps=[1], out=str(tmp_path / "rl"))  # fmt: skip
    argv = ["rl", *(x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", _flag(v)))]
    assert main(argv) == 0
    rounds = [read_records(tmp_path / "rl" / "rounds" / f"round-{r:05d}.jsonl") for r in (1, 2)]
    assert [len(r) for r in rounds] == [6, 6]
    coefficient = "weight" if algorithm == "drift" else "advantage"
    assert all("return" in rec and coefficient in rec for rec in rounds[0] + rounds[1])
    cfg = resolve(RLConfig, **flags)
    prompts = load_problems("arithmetic", split="train", limit=8, seed=0, digits=1)
    make_env, _ = env_factory(cfg)
    fresh = HFGenerator(str(tmp_path / "rl" / "snapshots" / "round-00001"), dtype="float32", batch_size=64)
    sampling = Sampling(temperature=1.0, max_new_tokens=4)
    seed = cfg.seed * 1_000_003 + 1  # round 2's (drift.rl._sample_round)
    again = run_episodes(
        _round_prompts(prompts, 1, cfg), make_env, fresh, n=3, max_turns=2, sampling=sampling, seed=seed
    )
    assert [r["messages"] for r in again] == [r["messages"] for r in rounds[1]]


def test_the_generator_holds_no_caches_through_training(tmp_path, tiny_model, monkeypatch):
    """After sampling a round, drift rl drops the KV caches the generator kept (computed with
    weights the updates are about to change; up to reuse_cache_bytes of memory)."""
    from drift.backends.hf import HFGenerator
    from drift.cli import main
    from drift.trainer import Trainer

    held = []
    step = Trainer.step

    def spy(self, *args, **kwargs):
        held.append(sum(len(ids) for ids, _ in HFGenerator.last._store.entries))
        return step(self, *args, **kwargs)

    real_init = HFGenerator.__init__

    def remember(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        HFGenerator.last = self

    monkeypatch.setattr(HFGenerator, "__init__", remember)
    monkeypatch.setattr(Trainer, "step", spy)
    flags = ["rl", "--model", tiny_model, "--steps", "2", "--prompts-per-step", "2", "--group-size", "2",
             "--max-new-tokens", "4", "--max-turns", "2", "--task-options", "digits=1", "--num-prompts", "4",
             "--dtype", "float32", "--skip-weight-share", "none", "--out", str(tmp_path / "rl")]  # fmt: skip
    assert main(flags) == 0
    assert held and held == [0] * len(held)


def _flag(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def test_an_algorithm_is_a_line_in_the_table(tmp_path, tiny_model, even_length_is_right, monkeypatch, capsys):
    """--algorithm takes the names of drift.algorithms.ALGORITHMS (and the whole-run ones of RUNNERS): a new
    entry is accepted on the command line, its coefficients are what the round trains with and what
    rounds/ keeps under its column, and an on-policy entry is held to temperature 1."""
    from drift.algorithms import ALGORITHMS, Algorithm
    from drift.cli import main
    from drift.records import read_records

    seen = []

    def halves(records, cfg):
        seen.append(len(records))
        return [0.0] * len(records), [0.5] * len(records)

    monkeypatch.setitem(ALGORITHMS, "halves", Algorithm(halves, column="weight", on_policy=False))
    flags = ["--model", tiny_model, "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
             "--max-new-tokens", "4", "--max-turns", "1", "--task-options", "digits=1", "--num-prompts", "4",
             "--verifier", "even", "--dtype", "float32", "--temperature", "0.7"]  # fmt: skip
    assert main(["rl", "--algorithm", "halves", *flags, "--out", str(tmp_path / "a")]) == 0
    assert seen == [4]
    assert [r["weight"] for r in read_records(tmp_path / "a" / "rounds" / "round-00001.jsonl")] == [0.5] * 4
    monkeypatch.setitem(ALGORITHMS, "halves", Algorithm(halves, column="weight", on_policy=True))
    assert main(["rl", "--algorithm", "halves", *flags, "--out", str(tmp_path / "b")]) == 2
    assert "--algorithm halves samples at temperature 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rl", "--algorithm", "nope", *flags, "--out", str(tmp_path / "c")])
    assert "choose from grpo, drift, halves, trl-grpo" in capsys.readouterr().err
