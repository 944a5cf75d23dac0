"""``drift rl --algorithm trl-grpo``: TRL's GRPOTrainer on drift's prompts, verifier and return.

The reward by hand; the refusals (multi-turn, resume); two tiny end-to-end runs that check what
TRL did against TRL's own log and drift's chat template: rounds, optimizer steps, tokens, FLOPs,
snapshots, a FLOP budget, LoRA merged into the saved model, and a model that moved.
"""

import json

import pytest

pytest.importorskip("trl")

from drift import DriftError
from drift.config import RLConfig
from drift.env import Problem
from drift.rollout import env_factory
from drift.trl_grpo import make_reward_function, run_trl_grpo

TOKEN_KINDS = ("prefilled", "generated", "scored", "reference", "trained")


def test_reward_is_drifts_one_turn_return_by_hand():
    cfg = RLConfig(max_turns=1, answer_mode="strict", format_penalty=0.25)
    make_env, _ = env_factory(cfg)  # arithmetic: the numeric verifier
    seen = []
    reward = make_reward_function(
        {"p0": Problem("p0", "What is 2+3?", "5", "arithmetic")},
        make_env,
        cfg.weighting(),
        tally=lambda returns, records, ids: seen.append((returns, [r["correct"] for r in records], ids)),
    )
    texts = ["<answer> 5 </answer>", "<answer>7</answer>", "5"]  # right; wrong; no <answer> tag (strict)
    ids = [[1, 2, 3], [4, 5], [6]]
    returns = reward(
        prompts=[[{"role": "user", "content": "..."}]] * 3,
        completions=[[{"role": "assistant", "content": t}] for t in texts],
        completion_ids=ids,
        prompt_id=["p0"] * 3,
        trainer_state=None,
    )
    # R = gamma^0 * r_1 - format_penalty * [unparsable] - lam * (1 - U/N), with U = N for one answer:
    # right: 1 - 0 - 0 = 1; wrong: 0 - 0 - 0 = 0; unparsable: 0 - 0.25 - 0 (N = 0: no penalty) = -0.25
    assert returns == [1.0, 0.0, -0.25]
    assert seen == [([1.0, 0.0, -0.25], [[True], [False], [False]], ids)]


def test_multi_turn_and_resume_are_refused(tmp_path):
    with pytest.raises(
        DriftError, match=r"single-turn: pass --max-turns 1 \(got 3\).*environment_factory.*rollout_func"
    ):
        run_trl_grpo(RLConfig(algorithm="trl-grpo", out=str(tmp_path / "a"), max_turns=3))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "rl_log.jsonl").write_text("{}\n")
    with pytest.raises(DriftError, match="cannot resume"):
        run_trl_grpo(RLConfig(algorithm="trl-grpo", out=str(tmp_path / "b"), max_turns=1, resume=True))
    with pytest.raises(DriftError, match="is not empty"):
        run_trl_grpo(RLConfig(algorithm="trl-grpo", out=str(tmp_path / "b"), max_turns=1))
    with pytest.raises(DriftError, match="gave 3 prompts, fewer than --prompts-per-step 8"):
        run_trl_grpo(RLConfig(algorithm="trl-grpo", out=str(tmp_path / "c"), max_turns=1, num_prompts=3))


@pytest.fixture
def even_length_is_right(monkeypatch):
    """A rigged verifier (as in test_rl.py): right when the answer has an even number of
    characters, so the tiny random model's groups have spread."""
    from drift import verifiers

    monkeypatch.setitem(verifiers.VERIFIERS, "even", lambda prediction, gold: len(prediction) % 2 == 0)


def test_trl_grpo_end_to_end(tmp_path, tiny_model, even_length_is_right):
    import torch
    from transformers import AutoModelForCausalLM

    from drift.chat import render_prompt
    from drift.cli import main
    from drift.compute import count_parameters, flops
    from drift.models import load_tokenizer
    from drift.tasks import load_problems

    rounds, B, G, new = 2, 2, 4, 4
    flags = ["rl", "--algorithm", "trl-grpo", "--model", tiny_model, "--prompts-per-step", str(B),
             "--group-size", str(G), "--max-new-tokens", str(new), "--max-turns", "1",
             "--task-options", "digits=1", "--num-prompts", "20", "--answer-mode", "lenient", "--verifier", "even",
             "--dtype", "float32", "--lr", "5e-2", "--lr-scheduler", "constant"]  # fmt: skip
    out = tmp_path / "trl"
    assert main([*flags, "--out", str(out), "--steps", str(rounds), "--epochs-per-round", "2", "--minibatches",
                 "2", "--kl-coef", "0.05", "--snapshot-steps", "1,2"]) == 0  # fmt: skip
    summary = json.loads((out / "rl_summary.json").read_text())
    log = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    trl_log = [json.loads(line) for line in (out / "trl_log.jsonl").read_text().splitlines()]
    # what TRL did: 2 rounds of B*G completions, each 2 passes x 2 optimizer steps, in float32 on the CPU
    assert summary["algorithm"] == "trl-grpo" and summary["multi_turn"] is False
    assert summary["steps"] == rounds and summary["trajectories"] == rounds * B * G
    assert summary["optimizer_steps"] == rounds * 2 * 2 and summary["trl"]["generation_batch_size"] == B * G
    assert (summary["dtype"], summary["device"]) == ("float32", "cpu")
    assert [e["step"] for e in log] == [1, 2] and [e["optimizer_steps"] for e in log] == [4, 8]
    assert [e["optimizer_step"] for e in trl_log if "loss" in e] == list(range(1, 9))
    # tokens: TRL's own numbers (completion lengths, num_tokens) and drift's chat template agree with ours
    sampled = [e for e in trl_log if "completions/mean_length" in e]
    assert len(sampled) == rounds  # one generation batch per round
    assert 0 < summary["generated_tokens"] <= rounds * B * G * new
    assert summary["generated_tokens"] == sum(e["completions/mean_length"] * B * G for e in sampled)
    sampled_tokens = sampled[-1]["num_tokens"]  # TRL's counter: prompt + completion of every row, all rounds
    assert summary["prefilled_tokens"] + summary["generated_tokens"] == sampled_tokens
    tokenizer, (make_env, _) = load_tokenizer(tiny_model), env_factory(RLConfig(max_turns=1))
    lengths = [
        len(render_prompt(tokenizer, make_env().reset(p)))
        for p in load_problems("arithmetic", split="train", limit=20, digits=1)
    ]
    assert rounds * B * G * min(lengths) <= summary["prefilled_tokens"] <= rounds * B * G * max(lengths)
    # old log-probs and reference once per round, two training passes
    assert summary["scored_tokens"] == summary["reference_tokens"] == sampled_tokens
    assert summary["trained_tokens"] == 2 * sampled_tokens
    n = count_parameters(out / "model")
    assert summary["parameters"] == n == count_parameters(tiny_model)
    assert summary["flops"] == pytest.approx(flops(n, **{k: summary[f"{k}_tokens"] for k in TOKEN_KINDS}))
    assert log[-1]["flops"] == pytest.approx(summary["flops"])
    # TRL forwards every example whole (no prefix trees): counted as run, the same FLOPs
    assert all(summary[f"{k}_forwarded_tokens"] == summary[f"{k}_tokens"] for k in ("scored", "reference", "trained"))
    assert summary["flops_as_run"] == summary["flops"] and log[-1]["flops_as_run"] == log[-1]["flops"]
    assert summary["generation_seconds"] > 0 and summary["training_seconds"] > 0
    assert all(-0.1 <= e["mean_return"] <= 1 and 0 <= e["solved"] <= 1 for e in log)
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["round-00001", "round-00002"]
    # the policy moved
    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # a FLOP budget any round exceeds: one round, then stop; LoRA merged into the saved model;
    # one optimizer step per round: no old log-probs, no reference
    out = tmp_path / "budget"
    assert main([*flags, "--out", str(out), "--steps", "5", "--max-flops", "1", "--lora-r", "4"]) == 0
    summary = json.loads((out / "rl_summary.json").read_text())
    assert summary["steps"] == 1 and summary["optimizer_steps"] == 1 and summary["trajectories"] == B * G
    assert summary["scored_tokens"] == summary["reference_tokens"] == 0
    assert summary["trained_tokens"] == summary["prefilled_tokens"] + summary["generated_tokens"]
    merged = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert merged.keys() == before.keys()
    assert any(not torch.equal(before[k], merged[k]) for k in before)


def test_reward_reads_the_sampled_ids_as_drifts_backend_decodes_them(tiny_model):
    """TRL's completion text drops every special token; the reward reads the ids as the hf backend
    does: up to the end token, special tokens kept, finish reason from the end token."""
    from drift.backends.hf import decode_reply
    from drift.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    cfg = RLConfig(max_turns=1, answer_mode="strict")
    make_env, _ = env_factory(cfg)
    seen = []
    eos = [tok.eos_token_id]
    reward = make_reward_function(
        {"p0": Problem("p0", "What is 2+3?", "5", "arithmetic")},
        make_env,
        cfg.weighting(),
        tally=lambda returns, records, ids: seen.extend(records),
        decode=lambda ids: decode_reply(tok, ids, eos),
    )
    special = tok.convert_tokens_to_ids("<|im_start|>")
    body = tok.encode("<answer>5</answer>", add_special_tokens=False)
    ids = [[special, *body, tok.eos_token_id], body]
    reward(prompts=[[]] * 2, completions=["<answer>5</answer>"] * 2, completion_ids=ids, prompt_id=["p0"] * 2)
    assert [r["messages"][-1]["content"] for r in seen] == ["<|im_start|><answer>5</answer>", "<answer>5</answer>"]
    assert [r["finish_reasons"] for r in seen] == [["stop"], ["length"]]
