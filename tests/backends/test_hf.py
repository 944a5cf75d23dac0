"""The hf backend on the tiny real model: shared prefill of repeated prompts changes nothing."""

import pytest

torch = pytest.importorskip("torch")

from drift.backends.base import Sampling  # noqa: E402
from drift.backends.hf import HFGenerator  # noqa: E402

# different lengths, so batches are left-padded and positions must follow the padding
QUESTIONS = [[{"role": "user", "content": text}] for text in
             ("What is 2+3?", "What is 17+25? Answer in a tag, please, and be quick about it.", "4*4?")]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefill_gives_the_replies_of_separate_prefills(tiny_model, temperature):
    # turn 1 of a rollout: each prompt K times (different seeds), plus n = 2 samples of each row
    conversations = [q for q in QUESTIONS for _ in range(3)]
    seeds = list(range(100, 100 + len(conversations)))
    sampling = Sampling(temperature=temperature, max_new_tokens=6)
    shared = HFGenerator(tiny_model, batch_size=8, autocast_bf16=False)
    used = []
    original = shared._shared_prefill
    shared._shared_prefill = lambda *a: used.append(bool(out := original(*a))) or out
    separate = HFGenerator(tiny_model, batch_size=8, autocast_bf16=False, share_prefill=False)
    got = shared.generate(conversations, 2, sampling, seeds)
    assert any(used), "no batch shared a prefill: the test checks nothing"
    assert got == separate.generate(conversations, 2, sampling, seeds)
    assert shared.tokens_generated == separate.tokens_generated > 0


def test_distinct_prompts_skip_the_shared_prefill(tiny_model):
    gen = HFGenerator(tiny_model, batch_size=8, autocast_bf16=False)
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    assert gen._shared_prefill([(0, 0), (1, 0)], prompts, 4, 0) == {}
    (cache,) = gen._shared_prefill([(0, 0), (0, 1), (1, 0)], prompts, 4, 0).values()
    assert cache.get_seq_length() == 3  # all but the last prompt token, for the 3 rows


def test_shared_cache_gives_the_logits_of_a_full_forward(tiny_model):
    gen = HFGenerator(tiny_model, batch_size=8, autocast_bf16=False)
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]]
    batch, width = [(1, 0), (0, 0), (1, 1), (0, 1)], 7
    ((name, cache),) = gen._shared_prefill(batch, prompts, width, 0).items()
    ids = torch.tensor([[0] * (width - len(prompts[i])) + prompts[i] for i, _ in batch])
    mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i, _ in batch])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = gen.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        step = gen.model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:],
                         **{name: cache}).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)
