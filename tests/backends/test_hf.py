"""The hf backend on the tiny real model: shared prefill of repeated prompts changes nothing."""

import pytest

torch = pytest.importorskip("torch")

from drift.backends.base import Sampling  # noqa: E402
from drift.backends.hf import HFGenerator  # noqa: E402

# different lengths, so batches are left-padded and positions must follow the padding
QUESTIONS = [
    [{"role": "user", "content": text}]
    for text in ("What is 2+3?", "What is 17+25? Answer in a tag, please, and be quick about it.", "4*4?")
]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefill_gives_the_replies_of_separate_prefills(tiny_model, temperature):
    # turn 1 of a rollout: each prompt K times (different seeds), plus n = 2 samples of each row
    conversations = [q for q in QUESTIONS for _ in range(3)]
    seeds = list(range(100, 100 + len(conversations)))
    sampling = Sampling(temperature=temperature, max_new_tokens=6)
    shared = HFGenerator(tiny_model, batch_size=8, dtype="float32")
    used = []
    original = shared._shared_prefill
    shared._shared_prefill = lambda *a: used.append(bool(out := original(*a))) or out
    separate = HFGenerator(tiny_model, batch_size=8, dtype="float32", share_prefill=False)
    got = shared.generate(conversations, 2, sampling, seeds)
    assert any(used), "no batch shared a prefill: the test checks nothing"
    assert all(reply for row in got for reply in row), "empty replies: the comparison checks nothing"
    assert got == separate.generate(conversations, 2, sampling, seeds)
    assert shared.tokens_generated == separate.tokens_generated > 0


def test_distinct_prompts_skip_the_shared_prefill(tiny_model):
    gen = HFGenerator(tiny_model, batch_size=8, dtype="float32")
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    assert gen._shared_prefill([(0, 0), (1, 0)], prompts, 4, 0) == {}
    (cache,) = gen._shared_prefill([(0, 0), (0, 1), (1, 0)], prompts, 4, 0).values()
    assert cache.get_seq_length() == 3  # all but the last prompt token, for the 3 rows


def test_shared_cache_gives_the_logits_of_a_full_forward(tiny_model):
    gen = HFGenerator(tiny_model, batch_size=8, dtype="float32")
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]]
    batch, width = [(1, 0), (0, 0), (1, 1), (0, 1)], 7
    ((name, cache),) = gen._shared_prefill(batch, prompts, width, 0).items()
    ids = torch.tensor([[0] * (width - len(prompts[i])) + prompts[i] for i, _ in batch])
    mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i, _ in batch])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = gen.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        step = gen.model(
            input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:], **{name: cache}
        ).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


def test_rows_draw_by_inverse_transform_from_their_own_cpu_generator():
    # The sampler takes row r's token where its cumulative probability first exceeds u_r, u_r drawn
    # from row r's CPU generator: the same choice whatever device holds the probabilities (a CUDA
    # tensor with a CPU generator was a crash in torch.multinomial).
    from drift.backends.hf import _RowSampler

    scores = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]))
    seeds = [3, 4]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    picked = _RowSampler(gens, temperature=1.0, top_p=1.0)(None, scores.clone()).argmax(-1).tolist()
    expected = []
    for row, seed in zip(scores.softmax(-1), seeds):
        u = torch.rand(1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).item()
        expected.append(int((row.double().cumsum(0) <= u).sum()))
    assert picked == expected
    # top-p keeps the smallest head with mass >= p: here only the 0.7 token of row 1
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    assert _RowSampler(gens, 1.0, top_p=0.5)(None, scores.clone()).argmax(-1).tolist()[1] == 0


def test_sampled_frequencies_follow_the_distribution():
    from drift.backends.hf import _RowSampler

    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    picked = _RowSampler(gens, 1.0, 1.0)(None, probs.log().expand(4000, 4).clone()).argmax(-1)
    freq = torch.bincount(picked, minlength=4).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03), freq


def test_every_declared_end_token_stops_a_reply(tiny_model, tmp_path):
    # Llama 3, Gemma and Phi-3 list their end-of-turn token in generation_config.eos_token_id
    import shutil

    from transformers import GenerationConfig

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    free = HFGenerator(str(folder), batch_size=4, dtype="float32")
    sampling = Sampling(temperature=1.0, max_new_tokens=12)  # sampled: the tiny model's greedy reply repeats one token
    outputs, generate = [], free.model.generate
    free.model.generate = lambda **kw: outputs.append(out := generate(**kw)) or out
    reply = free.generate(QUESTIONS[:1], 1, sampling, seeds=[7])[0][0]
    ids = outputs[0][0, -12:].tolist()
    # make a token of the reply (its first occurrence at j > 0) an end token, declared only in a list
    j = next((j for j in range(1, len(ids)) if ids[j] not in ids[:j]), None)
    assert j is not None and j < len(ids) - 1, f"no token of {ids} to cut the reply at"
    stop = ids[j]
    config = GenerationConfig.from_pretrained(folder)
    config.eos_token_id = [free.tokenizer.eos_token_id, stop]
    config.save_pretrained(folder)
    cut = HFGenerator(str(folder), batch_size=4, dtype="float32")
    assert stop in cut.eos_ids
    before = cut.tokens_generated
    short = cut.generate(QUESTIONS[:1], 1, sampling, seeds=[7])[0][0]
    assert cut.tokens_generated - before == j + 1 and len(short) < len(reply)


def test_the_models_own_generation_config_is_not_applied(tiny_model, tmp_path):
    # a repetition penalty (or top-k, no-repeat n-grams) in generation_config would change what is
    # sampled: replies must be those of the bare distribution, and the ids must say how they ended
    import shutil

    from transformers import GenerationConfig

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    plain = HFGenerator(str(folder), batch_size=8, dtype="float32")
    sampling = Sampling(temperature=0.0, max_new_tokens=8)
    before = plain.generate(QUESTIONS, 1, sampling)
    config = GenerationConfig.from_pretrained(folder)
    config.repetition_penalty, config.no_repeat_ngram_size = 50.0, 1
    config.save_pretrained(folder)
    biased = HFGenerator(str(folder), batch_size=8, dtype="float32")
    assert biased.model.generation_config.repetition_penalty == 50.0
    after = biased.generate(QUESTIONS, 1, sampling)
    assert after == before and any(len(set(r[0].token_ids)) < len(r[0].token_ids) for r in before), (
        "no repeated token in the replies: a repetition penalty would have changed nothing"
    )
    own = HFGenerator(str(folder), batch_size=8, dtype="float32", model_generation_config=True)
    assert own.generate(QUESTIONS, 1, sampling) != before  # asked for, the model's processors do apply
    for (reply,) in after:
        assert reply.finish_reason in ("stop", "length")
        assert (reply.token_ids[-1] in biased.eos_ids) == (reply.finish_reason == "stop")
        assert len(reply.token_ids) == 8 or reply.finish_reason == "stop"
