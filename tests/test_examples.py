"""Training examples train exactly what the policy generated, ending the way it ended."""

import pytest

torch = pytest.importorskip("torch")

from drift import DriftError  # noqa: E402
from drift.backends.base import Sampling  # noqa: E402
from drift.chat import end_of_turn_ids  # noqa: E402
from drift.examples import build_examples, split_micro_batches  # noqa: E402
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
