"""Prefix-shared micro-batches: the tree against its rows, and the packed forward and backward against
the padded batch's (same logits, same gradient, same optimizer step)."""

import json
import random

import pytest

torch = pytest.importorskip("torch")

from drift.examples import Example, build_examples, collate  # noqa: E402
from drift.losses import completion_logits, weighted_nll_terms  # noqa: E402
from drift.models import load_model, load_tokenizer  # noqa: E402
from drift.packing import pack_rows, pair_cost, prefix_tree, supports_packing  # noqa: E402
from factories import make_record  # noqa: E402


def _random_rows(rng: random.Random, n: int) -> list[list[int]]:
    stem = [rng.randrange(5) for _ in range(rng.randrange(1, 6))]
    tail = [[rng.randrange(3) for _ in range(rng.randrange(1, 5))] for _ in range(n)]
    return [stem[: rng.randrange(len(stem) + 1)] + t for t in tail]


def test_the_tree_holds_every_row_and_each_distinct_prefix_once():
    rng = random.Random(0)
    for _ in range(200):
        rows = _random_rows(rng, rng.randrange(1, 6))
        tokens, depths, paths = prefix_tree(rows)
        assert [[tokens[n] for n in path] for path in paths] == rows
        assert all(depths[n] == j for path in paths for j, n in enumerate(path))
        assert len(tokens) == len({tuple(r[: j + 1]) for r in rows for j in range(len(r))})
        # a parent is created before its children: the sequence order respects causality
        assert all(path == sorted(path) for path in paths)


def test_a_node_attends_to_its_ancestors_and_itself_only():
    rows = [[1, 2, 3], [1, 2, 4, 5], [6]]
    packed = pack_rows(rows, k=2)
    _, _, paths = prefix_tree(rows)
    ancestors = {n: set(path[: j + 1]) for path in paths for j, n in enumerate(path)}
    mask = packed.mask[0, 0]
    for i in range(packed.n_nodes):
        assert {j for j in range(packed.n_nodes) if mask[i, j]} == ancestors[i]
    assert packed.position_ids.tolist() == [[0, 1, 2, 2, 3, 0]]


def test_not_worth_packing_gives_none():
    assert pack_rows([[1, 2, 3], [4, 5, 6]], k=1, pair_cost=0.0) is None
    assert pack_rows([[1, 2, 3], [1, 2, 4]], k=1, pair_cost=0.0) is not None
    assert pack_rows([[1, 2, 3, 4], [1, 5, 6, 7]], k=1, pair_cost=1.0) is None  # attention: 7 + 49 > 0.9 * 2 * (4 + 16)
    assert pack_rows([[1, 2, 3], [4, 5, 6]], k=1) is not None  # no cost given: always the tree


def test_pair_cost_follows_the_config(tiny_model):
    model = load_model(tiny_model)
    text = model.config.get_text_config()
    h, heads, d = text.hidden_size, text.num_attention_heads, text.head_dim
    weights = 2 * h * heads * d + 2 * h * text.num_key_value_heads * d + 3 * h * text.intermediate_size
    assert pair_cost(model) == pytest.approx(2.0 * 4 * heads * d / (2 * weights))
    model.config._attn_implementation = "flash_attention_2"
    assert pair_cost(model) is None


def _examples(tok):
    """Examples that share prefixes to different depths: two problems, two and three turns, and a filler."""
    recs = [
        make_record("a", 0, ["4", "5"], 2, weight=0.5),
        make_record("a", 1, ["4", "6", "5"], 3, weight=1.5),
        make_record("a", 2, ["7", "5"], 2, weight=1.0),
        make_record("b", 0, ["123456"], weight=2.0),
    ]
    examples = [build_examples(r, tok, index=i)[0] for i, r in enumerate(recs)]
    return examples + [Example(examples[0].input_ids[:2], 2, 0.0, -1)]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_logits_and_gradients_equal_the_padded_batch(tiny_model, attention):
    tok = load_tokenizer(tiny_model)
    model = load_model(tiny_model)
    model.set_attn_implementation(attention)
    examples = _examples(tok)
    plain, shared = collate(examples, tok.pad_token_id), collate(examples, tok.pad_token_id, pair_cost=0.0)
    assert plain.packed is None and shared.packed is not None
    assert shared.packed.n_nodes < sum(len(e.input_ids) for e in examples)
    assert supports_packing(model)
    grads = []
    for batch in (plain, shared):
        model.zero_grad()
        logits = completion_logits(model, batch)
        trained = batch.labels != -100
        terms, _ = weighted_nll_terms(model, batch)
        terms.sum().backward()
        grads.append((logits.detach()[trained], terms.detach(), [p.grad.clone() for p in model.parameters()]))
    (lp, tp, gp), (ls, ts, gs) = grads
    assert torch.allclose(lp, ls, atol=1e-4, rtol=1e-4)
    assert torch.allclose(tp, ts, atol=1e-5, rtol=1e-5) and ts[-1].item() == 0.0
    for a, b in zip(gp, gs):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_a_sliding_window_model_keeps_the_padded_batch(tiny_model):
    model = load_model(tiny_model)
    model.config.get_text_config().sliding_window = 16
    assert not supports_packing(model)
    model.config.get_text_config().layer_types = ["full_attention"]  # declared per layer: all full
    assert supports_packing(model)
    model.config.get_text_config().layer_types = ["full_attention", "sliding_attention"]
    assert not supports_packing(model)
    model = load_model(tiny_model)
    model.config._attn_implementation = "flash_attention_2"
    assert not supports_packing(model)


def shared_file(path):
    """Two problems x 6 trajectories of 2 to 4 turns whose first replies repeat: deep shared prefixes."""
    from drift.records import write_records

    recs = []
    for p, question in enumerate(["What is 12+30?", "What is 7+8?"]):
        for t in range(6):
            answers = ["41", "40", "43", "42"][: 2 + t % 3]
            recs.append(make_record(f"p{p}", t, answers, first_correct=None, weight=0.5 + t, question=question))
    write_records(path, recs)
    return path


def _run_train(tmp_path, name, data, model, *extra):
    from drift.cli import main
    from test_trainer import SGD

    args = ["train", str(data), "--out", str(tmp_path / name), "--model", model, *SGD]
    assert main([*args, "--batch-size", "12", "--micro-batch-size", "6", *extra]) == 0  # later options win
    return json.loads((tmp_path / name / "train_summary.json").read_text())


def test_training_on_prefix_trees_gives_the_padded_runs_weights_on_one_and_two_processes(tmp_path, tiny_model):
    import os
    import subprocess

    from rank_spy import CLI, SPY, read_spy
    from test_trainer import SGD, TORCHRUN, finish, free_port, load

    torch.set_num_threads(1)
    data = shared_file(tmp_path / "w.jsonl")
    plain = _run_train(tmp_path, "plain", data, tiny_model, "--no-share-prefixes")
    shared = _run_train(tmp_path, "shared", data, tiny_model)
    assert plain["forwarded_tokens"] == plain["tokens"]
    assert shared["tokens"] == plain["tokens"] and shared["forwarded_tokens"] < 0.6 * shared["tokens"]
    args = ["train", str(data), "--out", str(tmp_path / "two"), "--model", tiny_model, *SGD, "--batch-size", "12"]
    script, spy = tmp_path / "spy_cli.py", tmp_path / "spy"  # drift.cli, each process noting what it ran
    script.write_text(SPY + CLI)
    spy.mkdir()
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), str(script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DRIFT_TEST_SPY": str(spy)}
    proc = subprocess.Popen([*cmd, "--micro-batch-size", "3"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    log = finish(proc)
    assert proc.returncode == 0, log[-3000:]
    two = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    # what the processes saw: a world of two, each packing its own runs of neighbours
    assert two["processes"] == 2 and two["strategy"] == "MULTI_CPU"
    assert two["tokens"] == plain["tokens"] and two["forwarded_tokens"] < 0.7 * two["tokens"]
    a, moved = load(tmp_path / "plain" / "model"), load(tiny_model)
    assert any(not torch.allclose(a[k], moved[k]) for k in a), "training did not move the weights"
    for other in ("shared", "two"):
        b = load(tmp_path / other / "model")
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5), (other, k)
    # each process's own: a step's 12 examples sorted by their tokens are cut into runs of 3
    # neighbours, two per process (no filler), and each process's trees run fewer tokens than its rows
    seen = read_spy(spy)
    assert sorted(seen) == [0, 1]
    splits = {rank: [c for c in calls if c["call"] == "split"] for rank, calls in seen.items()}
    assert len(splits[0]) == len(splits[1]) == two["steps"] > 0
    for on_0, on_1 in zip(splits[0], splits[1], strict=True):
        assert on_0["batch"] == on_1["batch"] and len(on_0["batch"]) == 12  # the same global batch on both
        assert [len(mb) for mb in on_0["mine"]] == [len(mb) for mb in on_1["mine"]] == [3, 3]
        mine = [[i for mb in c["mine"] for i in mb] for c in (on_0, on_1)]
        assert sorted(mine[0] + mine[1]) == sorted(on_0["batch"])  # between them, each example once
    runs = {rank: [c for c in calls if c["call"] == "collate"] for rank, calls in seen.items()}
    per_rank = {rank: (sum(c["tokens"] for c in rs), sum(c["forwarded"] for c in rs)) for rank, rs in runs.items()}
    for rank, (tokens, forwarded) in per_rank.items():
        assert forwarded < 0.7 * tokens, (rank, per_rank)  # this process packed its own micro-batches
    assert sum(t for t, _ in per_rank.values()) == two["tokens"]
    assert sum(f for _, f in per_rank.values()) == two["forwarded_tokens"]


def test_steps_of_whole_prompts_share_more_than_shuffled_examples(tmp_path, tiny_model):
    torch.set_num_threads(1)
    data = shared_file(tmp_path / "w.jsonl")
    extra = ["--batch-size", "6", "--micro-batch-size", "6"]
    mixed = _run_train(tmp_path, "mixed", data, tiny_model, *extra)
    whole = _run_train(tmp_path, "whole", data, tiny_model, *extra, "--batch-by", "prompt")
    assert whole["tokens"] == mixed["tokens"] and whole["steps"] == mixed["steps"] == 2
    # each step holds one prompt's six trajectories: everything but their last turns is shared
    assert whole["forwarded_tokens"] < mixed["forwarded_tokens"]


def test_a_wrapped_eager_model_gets_the_additive_mask(tiny_model, tmp_path):
    """Behind DistributedDataParallel (what accelerate hands the training step) the model's config
    is out of sight: the mask must still be eager's additive one, or eager adds True as +1 and
    every node reads every other."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        tok = load_tokenizer(tiny_model)
        model = load_model(tiny_model)
        model.set_attn_implementation("eager")
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        examples = _examples(tok)
        plain, shared = collate(examples, tok.pad_token_id), collate(examples, tok.pad_token_id, pair_cost=0.0)
        trained = plain.labels != -100
        with torch.no_grad():
            a, b = completion_logits(wrapped, plain)[trained], completion_logits(wrapped, shared)[trained]
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "model_type, extra",
    [("mpt", {}), ("bloom", {}), ("gpt_neo", {}), ("falcon", {"alibi": True}), ("llama", {"alibi": True})],
)
def test_models_whose_positions_are_not_position_ids_keep_the_padded_batch(tiny_model, model_type, extra):
    # ALiBi biases by the key's index in the sequence, local attention windows by distance in it:
    # in a flattened tree neither is the row's own
    model = load_model(tiny_model)
    assert supports_packing(model)
    model.config.model_type = model_type
    for key, value in extra.items():
        setattr(model.config, key, value)
    assert not supports_packing(model)
