"""drift's decode loop against transformers' ``generate``: the same tokens and logits, fewer rows."""

import pytest

torch = pytest.importorskip("torch")

from drift.backends.base import Sampling  # noqa: E402
from drift.backends.hf import HFGenerator, _left_pad, _RowSampler  # noqa: E402
from drift.backends.hf_decode import decode  # noqa: E402


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("leave", [True, False])  # False: a hybrid model's cache, whose rows cannot leave
@pytest.mark.parametrize("last_only", [True, False])  # the forward computes only the last column's logits
def test_rows_leave_at_their_end_with_the_tokens_and_logits_of_generate(
    tiny_model, temperature, leave, last_only, monkeypatch
):
    from transformers import GenerationConfig

    import drift.backends.hf_decode as hf_decode

    if not leave:
        monkeypatch.setattr(hf_decode, "_rows_can_leave", lambda cache: False)

    gen = HFGenerator(tiny_model, dtype="float32")
    model, name = gen.model, gen._cache_keyword
    # prompts of different lengths (left padding); more tokens end replies, so that rows end at
    # different steps (the tiny model's replies are otherwise 12 tokens, all "length"; its greedy
    # replies repeat the prompt's last token: 8 and 10 end rows 0 and 2 at once)
    prompts = [list(range(5, 5 + n)) for n in (4, 9, 6, 9, 2)]
    ends = sorted(set(gen.eos_ids) | {8, 10} | set(gen.tokenizer.convert_tokens_to_ids(["4", "6", "a", "e"])))
    ids, mask = _left_pad(prompts, 9, 0)
    sampling = Sampling(temperature=temperature, max_new_tokens=12)
    rows = [(r, 0) for r in range(len(prompts))]

    def sampler():
        return _RowSampler.for_rows(rows, [11, 12, 13, 14, 15], sampling) if temperature > 0 else None

    steps, handed, pick = [], [], sampler()

    def choose(logits, live):
        steps.append((list(live), logits.clone()))
        return pick.choose(logits, live) if pick else logits.argmax(-1)

    def on_end(cache, at, ended, sampled):
        for a, r, s in zip(at, ended, sampled):  # row r's keys of layer 0, at its cache row a
            cols = torch.cat([mask[r].nonzero().flatten(), torch.arange(9, cache.get_seq_length())])
            handed.append((r, len(s), cache.layers[0].keys.shape[0], cache.layers[0].keys[a][:, cols].clone()))

    got = decode(model, name, ids, mask, None, max_new_tokens=12, end_ids=ends, choose=choose,
                 autocast=torch.no_grad(), on_end=on_end, device="cpu", last_logits_only=last_only)  # fmt: skip
    extra = {"logits_processor": [sampler()]} if temperature > 0 else {}
    config = GenerationConfig(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=ends,
                              return_dict_in_generate=True, output_logits=True)  # fmt: skip
    with torch.no_grad():  # a bare config: the model's own would add its processors
        want = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **extra)
    for r, seq in enumerate(want.sequences[:, 9:].tolist()):
        end = next((k for k, t in enumerate(seq) if t in ends), len(seq) - 1)
        assert got[r] == seq[: end + 1]
        for step, logits in enumerate(want.logits[: end + 1]):  # the logits each row's token came from
            live, mine = steps[step]
            torch.testing.assert_close(mine[live.index(r)], logits[r].float(), rtol=1e-5, atol=1e-5)
    lengths = sorted({len(s) for s in got})
    assert len(lengths) > 1 and lengths[0] < 12, f"rows all ended together ({lengths}): nothing left the batch"
    assert [len(live) for live, _ in steps] == [sum(len(s) > k for s in got) for k in range(max(lengths))]
    # each row's cache was handed over at its end: that of its prompt and all its tokens but the last
    assert sorted(r for r, *_ in handed) == list(range(len(prompts)))
    for r, length, rows_in_cache, keys in handed:
        assert length == len(got[r]) and rows_in_cache == (sum(len(s) >= length for s in got) if leave else 5)
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([prompts[r] + got[r][:-1]]), use_cache=True)
        torch.testing.assert_close(keys, getattr(alone, name).layers[0].keys[0], rtol=1e-5, atol=1e-5)


def test_no_new_tokens_is_an_error(tiny_model):
    gen = HFGenerator(tiny_model, dtype="float32")
    ids, mask = _left_pad([[5, 6, 7]], 3, 0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decode(gen.model, gen._cache_keyword, ids, mask, None, max_new_tokens=0, end_ids=[2],
               choose=lambda x, rows: x.argmax(-1), autocast=torch.no_grad(), on_end=print, device="cpu")  # fmt: skip


def test_autocast_is_entered_once_per_batch(tiny_model):
    # leaving autocast empties its cache of cast weights: entered every step, drift rl's float32
    # policy would be cast to bf16 again at every decode step
    entered = []

    class Counting:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    gen = HFGenerator(tiny_model, dtype="float32")
    ids, mask = _left_pad([[5, 6, 7], [8, 9]], 3, 0)
    got = decode(gen.model, gen._cache_keyword, ids, mask, None, max_new_tokens=6, end_ids=[], device="cpu",
                 choose=lambda x, r: x.argmax(-1), autocast=Counting(), on_end=lambda *a: None)  # fmt: skip
    assert [len(s) for s in got] == [6, 6] and len(entered) == 1


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_cpu_decode_step_asks_sdpa_for_grouped_query_attention_only_in_float32(tiny_model, monkeypatch, dtype):
    # torch's CPU kernel with enable_gqa=True is ~5x slower in bf16 than the same attention with the
    # query heads packed per key/value head (as fast in float32); transformers asks for it on every
    # unpadded decode step
    import torch.nn.functional as F

    calls, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda *a, **kw: calls.append((a[0].shape, kw)) or sdpa(*a, **kw)
    )
    gen = HFGenerator(tiny_model, dtype=dtype)
    assert gen.model.config.num_key_value_heads < gen.model.config.num_attention_heads  # grouped: the case
    prompt = [{"role": "user", "content": "What is 2+3?"}]
    gen.generate([prompt], 2, Sampling(temperature=0.0, max_new_tokens=4))  # 2 equal rows: no padding
    decode_steps = [kw for shape, kw in calls if shape[-2] <= 2]  # (rows, 4, 1, dim), or packed (rows, 2, 2, dim)
    assert len(decode_steps) >= 3 * 2, "not every decode step of both layers reached sdpa"
    assert {bool(kw.get("enable_gqa")) for kw in decode_steps} == {dtype == "float32"}


def test_packed_decode_attention_is_sdpas(tiny_model):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from drift.backends.hf_decode import packed_decode_attention

    gen = HFGenerator(tiny_model, dtype="float32")
    module = gen.model.model.layers[0].self_attn
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, h, n, 8, generator=g).bfloat16() for h, n in ((4, 1), (2, 7), (2, 7)))
    got, _ = packed_decode_attention(module, q, k, v, None, scaling=0.3)
    want, _ = sdpa_attention_forward(module, q.float(), k.float(), v.float(), None, scaling=0.3)
    assert got.shape == want.shape == (3, 1, 4, 8) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("prefilled", [False, True])
def test_decode_steps_do_not_copy_the_cache(tiny_model, prefilled, monkeypatch):
    # transformers' DynamicLayer appends a step's column by torch.cat: a copy of the whole cache
    # per layer and step (~15% of a bf16 decode step of 64 rows x 300 tokens); the loop's layers
    # write it in place
    from transformers import DynamicCache

    gen = HFGenerator(tiny_model, dtype="float32")
    storages = []

    def model(**kwargs):
        out = gen.model(**kwargs)
        storages.append(getattr(out, gen._cache_keyword).layers[0].keys.untyped_storage().data_ptr())
        return out

    ids, mask = _left_pad([[5, 6, 7, 9], [8, 9, 10, 11]], 4, 0)
    cache = None
    if prefilled:  # the cache of every column but the last, as drift.backends.hf_cache.prefill gives
        with torch.no_grad():
            cache = gen.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True)
            cache = getattr(cache, gen._cache_keyword)
        assert isinstance(cache, DynamicCache)

    def run(cache):
        return decode(model, gen._cache_keyword, ids, mask, cache, max_new_tokens=8, end_ids=[], device="cpu",
                      choose=lambda x, r: x.argmax(-1), autocast=torch.no_grad(), on_end=lambda *a: None)  # fmt: skip

    plain = None if cache is None else DynamicCache([(layer.keys, layer.values) for layer in cache.layers])
    got = run(cache)
    assert [len(s) for s in got] == [8, 8] and len(storages) == 8
    assert len(set(storages[1:])) == 1, "a decode step copied the cache into a new tensor"
    import drift.backends.hf_decode as hf_decode

    monkeypatch.setattr(hf_decode, "with_room", lambda cache, room: cache)  # transformers' layers
    assert run(plain) == got
