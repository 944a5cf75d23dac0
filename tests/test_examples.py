"""Training examples train exactly what the policy generated, ending the way it ended."""

import os
import random
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from drift import DriftError  # noqa: E402
from drift.backends.base import Sampling  # noqa: E402
from drift.chat import end_of_turn_ids  # noqa: E402
from drift.examples import build_examples, plan_batches, plan_minibatches, split_micro_batches  # noqa: E402
from drift.models import load_tokenizer  # noqa: E402
from factories import make_record  # noqa: E402

LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


@pytest.fixture
def llama3_style(tiny_model):
    """The tiny tokenizer with a Llama-3-style template: its end-of-turn token is not its EOS."""
    tok = load_tokenizer(tiny_model)
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def completion(example):
    return example.input_ids[example.n_prompt :]


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_a_finished_reply_ends_with_the_templates_own_end_of_turn_token(tiny_model, llama3_style, template):
    tok = load_tokenizer(tiny_model) if template == "chatml" else llama3_style
    marker = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}[template]
    assert end_of_turn_ids(tok) == (tok.convert_tokens_to_ids(marker),)
    rec = {**make_record("p", 0, ["4", "5"], first_correct=2, weight=1.0), "finish_reasons": ["stop", "stop"]}
    (ex,) = build_examples(rec, tok)
    ids = completion(ex)
    assert tok.convert_ids_to_tokens(ids[-1]) == marker
    assert tok.decode(ids[:-1]) == "<answer>5</answer>"
    if template == "llama3":
        assert tok.eos_token_id not in ids  # the tokenizer's EOS (<|im_end|>) is not this template's end of turn


def test_a_truncated_reply_has_no_end_of_turn_token_in_its_labels(tiny_model):
    tok = load_tokenizer(tiny_model)
    rec = {**make_record("p", 0, ["4", "5"], weight=1.0), "finish_reasons": ["stop", "length"]}
    (ex,) = build_examples(rec, tok)
    assert set(completion(ex)).isdisjoint(end_of_turn_ids(tok)) and tok.eos_token_id not in completion(ex)
    assert tok.decode(completion(ex)) == "<answer>5</answer>"
    # unknown (the reference layout, older files) counts as finished
    (unknown,) = build_examples({**rec, "finish_reasons": [None, None]}, tok)
    assert completion(unknown) == completion(ex) + [tok.eos_token_id]


def test_recorded_ids_are_trained_as_they_are(tiny_model):
    tok = load_tokenizer(tiny_model)
    rec = {**make_record("p", 0, ["4", "5"], weight=1.0), "token_ids": [None, [7, 8, 9]]}
    (ex,) = build_examples(rec, tok)
    assert completion(ex) == [7, 8, 9]
    exs = build_examples(rec, tok, target="all")
    assert completion(exs[1]) == [7, 8, 9] and completion(exs[0])[-1] == tok.eos_token_id


def test_recorded_ids_beyond_the_models_vocabulary_are_refused(tiny_model):
    """token_ids are trained as they are: records sampled by a model with a larger vocabulary than
    --model's once crashed in the embedding lookup (or, smaller, trained meaningless ids)."""
    tok = load_tokenizer(tiny_model)
    rec = {**make_record("p", 0, ["4", "5"], weight=1.0), "model": "big-model", "token_ids": [None, [7, len(tok)]]}
    with pytest.raises(DriftError, match=rf"record 4.*token_ids.*id {len(tok)}.*{len(tok)} tokens.*'big-model'"):
        build_examples(rec, tok, index=3)


def test_round_trip_of_the_tiny_models_own_rollouts(tiny_model):
    """drift rollout -> drift train's tokenisation gives back the ids the model sampled, for replies
    that stopped and replies cut by max_new_tokens (the share that differs must be 0). The random
    model samples token sequences that re-tokenising their text would not give back (50 of 64 here):
    the record's token_ids are what makes the round trip exact."""
    from drift.backends.hf import HFGenerator
    from drift.env import CorrectionEnv, Problem

    gen = HFGenerator(tiny_model, batch_size=16, dtype="float32")
    tok = gen.tokenizer
    turns, differ, reasons, records = 0, 0, set(), []
    for max_new in (3, 24):
        envs = [CorrectionEnv(lambda p, g: False, max_turns=2, answer_mode="lenient") for _ in range(16)]
        for k, env in enumerate(envs):
            env.reset(Problem(f"p{k}", f"What is {k}+{k * 3}?", "0", "arithmetic"))
        sampled = [[] for _ in envs]
        for turn in range(2):
            replies = gen.generate(
                [env.messages for env in envs],
                1,
                Sampling(temperature=1.0, max_new_tokens=max_new),
                seeds=[1000 * turn + k for k in range(16)],
            )
            for env, (reply,), ids in zip(envs, replies, sampled):
                ids.append(list(reply.token_ids))
                env.step(reply, reply.finish_reason, reply.token_ids)
        for k, env in enumerate(envs):
            rec = {**env.record(traj_id=0), "weight": 1.0}
            records.append(rec)
            for t, ex in enumerate(build_examples(rec, tok, target="all", max_length=4096)):
                turns += 1
                reasons.add(rec["finish_reasons"][t])
                differ += completion(ex) != sampled[k][t]
    assert reasons == {"stop", "length"}, "the test needs both kinds of ending"
    assert differ == 0, f"{differ} of {turns} turns train other ids than were sampled"
    # the summary of drift train says how many of them the text alone would not have given back
    from drift.examples import completion_sources

    records.sort(key=lambda r: r["prompt_id"])
    sources = completion_sources(records, tok, target="all")
    assert sources["from_ids"] == turns and sources["from_text"] == 0 and 0 < sources["text_differs"] <= turns


def test_fillers_train_nothing():
    from drift.examples import Example, collate

    exs = [Example([5, 6, 7], 1, 1.0, i) for i in range(3)]
    mbs = split_micro_batches(exs, 1, 2, 1, group_by_length=False)
    _, _, _, labels, weights, k, old, packed = collate(mbs[1], 0, pair_cost=0.0)
    assert packed is None and mbs[1][0].index == -1 and k == 1 and (labels == -100).all()
    assert weights.tolist() == [0.0] and old is None


def test_a_long_reply_is_cut_only_when_the_example_does_not_fit(tiny_model):
    """A reply longer than half of max_length is trained whole, end token included, when it fits
    next to its prompt; when the example does not fit, the reply keeps at least half of max_length
    and the prompt the most recent rest (at least one token)."""
    tok = load_tokenizer(tiny_model)
    rec = {**make_record("p", 0, ["4", "5"], weight=1.0), "token_ids": [None, list(range(10, 290))]}  # 280 ids
    (ex,) = build_examples(rec, tok, max_length=400)
    whole = build_examples(rec, tok, max_length=4096)[0]
    assert ex.n_prompt + 280 <= 400 and ex.input_ids == whole.input_ids  # it fits: nothing is cut
    (tight,) = build_examples(rec, tok, max_length=300)
    assert len(tight.input_ids) == 300 and completion(tight) == list(range(10, 290))[: 300 - tight.n_prompt]
    assert tight.input_ids[: tight.n_prompt] == whole.input_ids[whole.n_prompt - tight.n_prompt : whole.n_prompt]
    (small,) = build_examples(rec, tok, max_length=100)
    assert len(small.input_ids) == 100 and small.n_prompt == 50 and completion(small) == list(range(10, 60))
    (two,) = build_examples(rec, tok, max_length=2)
    assert two.n_prompt == 1 and completion(two) == [10]
    with pytest.raises(DriftError, match="max_length"):
        build_examples(rec, tok, max_length=1)


# -- the order of an epoch (plan_batches) and of an online round's updates (plan_minibatches) ----


def flat(plan):
    return [i for step in plan for i in step]


@pytest.mark.parametrize(
    "n, size, sizes",
    [(10, 3, [3, 3, 3, 1]), (12, 4, [4, 4, 4]), (1, 5, [1]), (7, 7, [7]), (0, 3, [])],
)
def test_an_epoch_takes_every_example_once_in_steps_of_batch_size(n, size, sizes):
    for seed, epoch in ((0, 0), (3, 5), (11, 1)):
        plan = plan_batches(n, size, seed=seed, epoch=epoch)
        assert sorted(flat(plan)) == list(range(n))  # each example exactly once
        assert [len(step) for step in plan] == sizes  # the final short step is kept


def test_an_epochs_order_is_a_function_of_seed_and_epoch_only():
    """The same (seed, epoch) gives the same order (a resumed run sees the same steps), whatever the
    batch size; any other seed or epoch another one."""
    n = 40
    assert plan_batches(n, 4, seed=7, epoch=2) == plan_batches(n, 4, seed=7, epoch=2)
    assert flat(plan_batches(n, 3, seed=7, epoch=2)) == flat(plan_batches(n, 8, seed=7, epoch=2))
    orders = {
        (seed, epoch): tuple(flat(plan_batches(n, 4, seed=seed, epoch=epoch)))
        for seed in range(4)
        for epoch in range(4)
    }
    assert len(set(orders.values())) == len(orders)  # 16 (seed, epoch) pairs, 16 orders
    assert tuple(range(n)) not in orders.values()  # shuffled


def scattered_groups(sizes: list[int]) -> list[str]:
    """A prompt key per example: group g has sizes[g] examples, at positions scattered over the file."""
    groups = [f"prompt-{g}" for g, k in enumerate(sizes) for _ in range(k)]
    random.Random(1).shuffle(groups)
    return groups


@pytest.mark.parametrize("sizes, size", [([2] * 6, 4), ([4] * 5, 4), ([3, 1, 4, 2, 5, 1], 4), ([6, 1, 1], 3)])
def test_steps_by_prompt_keep_a_groups_examples_together(sizes, size):
    """batch_by prompt: the same shuffle as without groups, then each group's examples gathered where
    its first one fell; a group longer than what is left of a step runs on into the next."""
    groups = scattered_groups(sizes)
    n = len(groups)
    for seed, epoch in ((0, 0), (5, 3)):
        plan = plan_batches(n, size, seed=seed, epoch=epoch, groups=groups)
        order, plain = flat(plan), flat(plan_batches(n, size, seed=seed, epoch=epoch))
        assert sorted(order) == list(range(n)) and all(len(step) == size for step in plan[:-1])
        for g in set(groups):
            where = [p for p, i in enumerate(order) if groups[i] == g]
            assert where == list(range(where[0], where[0] + len(where))), (g, order)  # contiguous
            # each group keeps its examples in the shuffle's order ...
            assert [order[p] for p in where] == [i for i in plain if groups[i] == g]
        # ... and the groups come in the order their first examples fell in the shuffle
        assert list(dict.fromkeys(groups[i] for i in order)) == list(dict.fromkeys(groups[i] for i in plain))
        if all(k == sizes[0] for k in sizes) and size % sizes[0] == 0:  # groups that tile the steps
            for step in plan:
                members = [{j for j in range(n) if groups[j] == groups[i]} for i in step]
                assert all(m <= set(step) for m in members), (step, groups)  # whole groups only
    other = [flat(plan_batches(n, size, seed=0, epoch=e, groups=groups)) for e in range(4)]
    assert len({tuple(o) for o in other}) == 4  # every epoch its own order of the groups


def test_the_order_is_the_same_in_another_process():
    """What makes a resumed run (or another process) see the same steps: nothing in the order depends
    on the interpreter's state, string hashing included (the prompt keys are strings)."""
    groups = scattered_groups([3, 1, 4, 2, 5, 1, 2, 2])
    code = "import sys\n"
    code += "from drift.examples import plan_batches as p\n"
    code += "print(p(20, 4, seed=3, epoch=1, groups=sys.argv[1:]))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code, *groups],
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for hash_seed in (1, 2, 3)
    }
    assert outputs == {str(plan_batches(20, 4, seed=3, epoch=1, groups=groups))}


def test_a_rounds_minibatches_are_a_function_of_seed():
    """An online round's parts and pass orders: the same seed gives the same ones (every process cuts
    the round alike), another seed other ones; a pass's order does not depend on how many passes follow."""
    parts, orders = plan_minibatches(30, 4, seed=9, epochs=3)
    assert sorted(i for p in parts for i in p) == list(range(30)) and sorted(len(p) for p in parts) == [7, 7, 8, 8]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)  # each pass takes every part once
    assert plan_minibatches(30, 4, seed=9, epochs=3) == (parts, orders)
    assert plan_minibatches(30, 4, seed=9, epochs=1) == (parts, orders[:1])
    others = [plan_minibatches(30, 4, seed=s, epochs=1)[0] for s in range(10, 14)]
    assert all(o != parts for o in others) and len({str(o) for o in others}) == len(others)
    passes = plan_minibatches(30, 4, seed=9, epochs=12)[1]
    assert len({tuple(o) for o in passes}) > 1  # the passes take the parts in other orders
