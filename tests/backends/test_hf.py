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
    original = shared._prefill
    shared._prefill = lambda *a: used.append((out := original(*a))[2] is not None) or out
    separate = HFGenerator(tiny_model, batch_size=8, dtype="float32", share_prefill=False)
    got = shared.generate(conversations, 2, sampling, seeds)
    assert any(used), "no batch shared a prefill: the test checks nothing"
    assert all(reply for row in got for reply in row), "empty replies: the comparison checks nothing"
    assert got == separate.generate(conversations, 2, sampling, seeds)
    assert shared.tokens_generated == separate.tokens_generated > 0


def test_distinct_prompts_skip_the_shared_prefill(tiny_model):
    gen = HFGenerator(tiny_model, batch_size=8, dtype="float32")
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    assert gen._prefill([(0, 0), (1, 0)], prompts, 0)[2:] == (None, 7)
    _, _, cache, encoded = gen._prefill([(0, 0), (0, 1), (1, 0)], prompts, 0)
    assert cache.get_seq_length() == 3  # all but the last prompt token, for the 3 rows
    assert encoded == 2 + 3 + 3  # each distinct prompt but its last token, then each row's last token


def test_shared_cache_gives_the_logits_of_a_full_forward(tiny_model):
    gen = HFGenerator(tiny_model, batch_size=8, dtype="float32")
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]]
    batch, width = [(1, 0), (0, 0), (1, 1), (0, 1)], 7
    _, _, cache, _ = gen._prefill(batch, prompts, 0)
    name = gen._cache_keyword
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


def test_unseeded_rows_leave_torchs_global_generator_alone():
    """Rows without a seed draw fresh ones without reseeding torch's global generator, which a
    caller (a trainer) may rely on."""
    from drift.backends.hf import _RowSampler

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = _RowSampler.for_rows([(0, 0), (0, 1)], [None], Sampling(temperature=1.0))
    b = _RowSampler.for_rows([(0, 0)], [None], Sampling(temperature=1.0))
    assert torch.equal(torch.get_rng_state(), state)
    assert a.generators[0].initial_seed() != b.generators[0].initial_seed()  # fresh each call


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
    reply = free.generate(QUESTIONS[:1], 1, sampling, seeds=[7])[0][0]
    ids = reply.token_ids
    assert reply.finish_reason == "length" and len(ids) == 12
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


# --- reuse of each conversation's KV cache across turns -------------------------------------------

INCORRECT = {"role": "user", "content": "Incorrect. Please think again."}


def _drive(gen, sampling, monkeypatch, turns=3, k=3, leaves=1):
    """Turns of a rollout (drift.rollout.run_episodes): each question K times, every active episode
    in one call with its own seed per turn, the conversation extended by the reply's text and a
    user message; episode ``leaves`` ends after turn 1 (its kept cache must go). Returns, per turn,
    ``(episode, prompt ids, reply, next prompt ids)`` of each active episode, and for every batch
    the live rows and logits of each decode step (those of a random tiny model are flat: a wrong
    position or cache barely moves the sampled tokens, it does move the logits)."""
    import drift.backends.hf as hf
    from drift.backends.hf_decode import decode
    from drift.examples import render_prompt

    logits = []

    def decode_keeping_logits(*args, choose, **kw):
        steps = []
        logits.append(steps)
        return decode(*args, choose=lambda x, rows: steps.append((list(rows), x.clone())) or choose(x, rows), **kw)

    monkeypatch.setattr(hf, "decode", decode_keeping_logits)
    conversations = [list(q) for q in QUESTIONS for _ in range(k)]
    active, turns_seen = list(range(len(conversations))), []
    for turn in range(1, turns + 1):
        prompts = [render_prompt(gen.tokenizer, conversations[e]) for e in active]
        replies = gen.generate([conversations[e] for e in active], 1, sampling, [1000 * turn + e for e in active])
        seen = []
        for e, prompt, (reply,) in zip(active, prompts, replies):
            conversations[e] = conversations[e] + [{"role": "assistant", "content": str(reply)}, INCORRECT]
            seen.append((e, prompt, reply, render_prompt(gen.tokenizer, conversations[e])))
        turns_seen.append(seen)
        active = [e for e in active if e != leaves]
    return turns_seen, logits


def _replies(turns):
    return [[(e, str(r), r.finish_reason, r.token_ids) for e, _, r, _ in seen] for seen in turns]


@pytest.mark.parametrize("temperature, stops", [(0.0, False), (1.0, False), (1.0, True)])
def test_reused_caches_give_the_replies_of_full_prefills(tiny_model, temperature, stops, monkeypatch):
    # 3 questions of different lengths x 3 trajectories, batches of 4 (< 9 rows): rows of a batch
    # have different cached and new lengths; with extra end tokens replies end at different steps.
    # (The tiny model's greedy replies are 8 newlines, the same for every row: the K rows of a
    # question then share one prefill on top of one reused cache at every turn.)
    sampling = Sampling(temperature=temperature, max_new_tokens=8)
    reused = HFGenerator(tiny_model, batch_size=4, dtype="float32")
    plain = HFGenerator(tiny_model, batch_size=4, dtype="float32", reuse_cache=False)
    if stops:  # two common digits end replies too: replies of 1-8 tokens, the end token not in the text
        extra = reused.tokenizer.convert_tokens_to_ids(["4", "6"])
        reused.eos_ids = plain.eos_ids = sorted(set(reused.eos_ids) | set(extra))
    matched = []
    match = reused._store.match
    reused._store.match = lambda p: matched.append((p, out := match(p))) or out
    (got, got_logits), (want, want_logits) = _drive(reused, sampling, monkeypatch), _drive(plain, sampling, monkeypatch)
    assert _replies(got) == _replies(want)
    assert len(got_logits) == len(want_logits) == 3 + 2 + 2  # 9, 8, 8 rows in batches of 4
    for a, b in zip(got_logits, want_logits):
        assert [rows for rows, _ in a] == [rows for rows, _ in b]
        for (_, x), (_, y) in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    if stops:  # rows left their batch as they ended
        assert any(len(rows) < len(a[0][0]) for a in got_logits for rows, _ in a)
    assert all(str(r) for seen in got for _, _, r, _ in seen), "empty replies: the comparison checks nothing"
    first_lengths = {len(p) for _, p, _, _ in got[0]}
    assert any(length > max(first_lengths) for _, (length, _) in matched), "no reply's cache was reused"
    later = [(p, r, q) for seen in got[1:] for _, p, r, q in seen]
    assert len(reused._store.entries) == len(got[-1])  # the episode that left has no entry any more
    if temperature > 0:  # the re-rendered text of a reply tokenises differently from its sampled ids
        assert any(q[: len(p) + len(r.token_ids)] != p + list(r.token_ids) for p, r, q in later)
    if stops:
        assert {r.finish_reason for seen in got for _, _, r, _ in seen} == {"stop", "length"}
    assert reused.tokens_generated == plain.tokens_generated
    assert reused.tokens_prefilled < plain.tokens_prefilled


def test_prefilled_tokens_count_what_the_model_reads(tiny_model, monkeypatch):
    # greedy, 2 turns, each question twice, one batch: every reply is 8 tokens ("length"), and the
    # model never reads the last sampled token, so a row keeps the cache of prompt + reply[:7]
    sampling = Sampling(temperature=0.0, max_new_tokens=8)
    counts = {}
    for name, options in {"reuse": {}, "plain": {"reuse_cache": False}, "capped": {"reuse_cache_bytes": 0}}.items():
        gen = HFGenerator(tiny_model, batch_size=8, dtype="float32", **options)
        turns, _ = _drive(gen, sampling, monkeypatch, turns=2, k=2, leaves=-1)
        counts[name] = gen.tokens_prefilled
    one = {e: (len(p), len(q)) for e, p, r, q in turns[0]}
    lengths = [one[e] for e in range(0, 6, 2)]  # (turn-1 prompt, turn-2 prompt) of each question
    for _, p, r, q in turns[0]:  # the preconditions of the counts below
        assert len(r.token_ids) == 8 and q[: len(p) + 8] == p + list(r.token_ids)
    assert [p for _, p, _, _ in turns[1][::2]] == [p for _, p, _, _ in turns[1][1::2]]  # same prompts, twice
    # turn 1: the two rows of a question share one prefill of its prompt but the last token, then
    # each row reads its last token; turn 2 without reuse: the same over the turn-2 prompts
    shared_1 = sum(p1 - 1 for p1, _ in lengths) + 6
    shared_2 = sum(p2 - 1 for _, p2 in lengths) + 6
    assert counts["plain"] == counts["capped"] == shared_1 + shared_2
    # turn 2 with reuse: each question starts from the cache of p1 + 7 reply tokens
    assert counts["reuse"] == shared_1 + sum(p2 - (p1 + 7) - 1 for p1, p2 in lengths) + 6
    # the figures for this tokenizer: prompts of 14, 50, 12 tokens, then 46, 82, 44
    assert lengths == [(14, 46), (50, 82), (12, 44)]
    assert (counts["plain"], counts["reuse"]) == (79 + 175, 79 + 78)


def _fused_adamw_step(model):
    """One step of torch's fused AdamW (drift's trainer on a CPU), which leaves the parameters'
    version counters as they were."""
    model.train()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model(input_ids=ids, labels=ids).loss.backward()
    versions = [p._version for p in model.parameters()]
    torch.optim.AdamW(model.parameters(), lr=0.05, fused=True).step()
    model.zero_grad()
    return versions


@pytest.mark.parametrize("change", ["in place", "fused optimizer"])
def test_changed_weights_drop_the_kept_caches(tiny_model, change):
    # drift rl trains the generator's model between rounds: a cache of the old weights is stale,
    # however the weights were changed (torch's fused AdamW does not bump the version counters)
    sampling = Sampling(temperature=1.0, max_new_tokens=8)
    conversations = [list(q) for q in QUESTIONS]
    reused = HFGenerator(tiny_model, batch_size=4, dtype="float32")
    plain = HFGenerator(tiny_model, batch_size=4, dtype="float32", reuse_cache=False)
    replies = reused.generate(conversations, 1, sampling, [1, 2, 3])
    assert replies == plain.generate(conversations, 1, sampling, [1, 2, 3])
    follow = [c + [{"role": "assistant", "content": str(r)}, INCORRECT] for c, (r,) in zip(conversations, replies)]
    for gen in (reused, plain):
        if change == "in place":
            with torch.no_grad():
                for p in gen.model.parameters():
                    p.mul_(1.5)
        else:
            versions = _fused_adamw_step(gen.model)
            assert [p._version for p in gen.model.parameters()] == versions  # what made the bug
    before = reused.tokens_prefilled
    assert reused.generate(follow, 1, sampling, [4, 5, 6]) == plain.generate(follow, 1, sampling, [4, 5, 6])
    assert reused.tokens_prefilled - before == sum(
        len(reused.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True)["input_ids"])
        for c in follow
    )  # all read afresh


def test_the_kept_entry_with_the_longest_common_prefix_is_found():
    # entries are sorted by ids and only the prompt's neighbours are compared: check against a scan
    import random

    from drift.backends.hf_cache import PrefixStore, common_prefix

    rng = random.Random(0)
    store = PrefixStore(max_bytes=0)
    store.pending = [(tuple(rng.choice((1, 2, 3)) for _ in range(rng.randint(1, 8))), i) for i in range(40)]
    store.commit()
    for _ in range(300):
        prompt = tuple(rng.choice((1, 2, 3)) for _ in range(rng.randint(1, 10)))
        length, kv = store.match(prompt)
        best = min(max(common_prefix(prompt, ids) for ids, _ in store.entries), len(prompt) - 1)
        assert length == best and (kv is None) == (best == 0)
        if kv is not None:
            assert common_prefix(prompt, dict((v, k) for k, v in store.entries)[kv]) >= length


def test_a_reply_ends_at_the_templates_end_of_turn_marker(tiny_model):
    """A model whose tokenizer EOS and generation config name another token than the one its chat
    template writes after a reply (<|im_end|> here) stops there all the same: without it, a reply
    ran on into turns it made up, and the last <answer> of those was scored."""
    from types import SimpleNamespace

    from drift.backends.hf import end_token_ids
    from drift.chat import end_of_turn_ids
    from drift.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokenizer.eos_token = next(t for t in tokenizer.all_special_tokens if tokenizer.convert_tokens_to_ids(t) != im_end)
    assert tokenizer.eos_token_id != im_end
    marker = end_of_turn_ids(tokenizer)[-1]  # read from the template, not the EOS
    assert marker == im_end
    assert marker in end_token_ids(tokenizer, SimpleNamespace(eos_token_id=tokenizer.eos_token_id))


def test_a_half_precision_backend_keeps_its_rotary_frequencies_in_float32(tiny_model):
    """Loaded in bf16, not loaded in float32 and cast: a cast rounds RoPE's inv_freq buffer to bf16
    (0.1% off, a phase error that grows with distance), which transformers' own bf16 loading,
    drift's trainer and vLLM all keep in float32."""
    gen = HFGenerator(tiny_model, dtype="bfloat16")
    frequencies = {name: buf.dtype for name, buf in gen.model.named_buffers() if "inv_freq" in name}
    assert frequencies and set(frequencies.values()) == {torch.float32}
    assert {p.dtype for p in gen.model.parameters()} == {torch.bfloat16}


def test_a_prefill_computes_the_logits_of_no_column_but_the_last(tiny_model):
    """The prefill keeps only the cache; logits over every prompt column cost memory and time."""
    gen = HFGenerator(tiny_model, batch_size=8, dtype="float32")
    shapes = []
    gen.model.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.logits.shape)))
    gen._prefill([(0, 0), (0, 1)], [list(range(5, 25))], 0)  # one prompt, two rows: a shared prefill
    assert shapes and all(shape[1] == 1 for shape in shapes)


def test_a_rows_reply_depends_on_its_seed_not_on_its_batch(tiny_model):
    """The same conversation and seed give the same reply alone, in a batch with other
    conversations, and in a later position of the batch (float32, sampled)."""
    sampling = Sampling(temperature=1.0, max_new_tokens=6)
    gen = HFGenerator(tiny_model, batch_size=8, dtype="float32", reuse_cache=False)
    alone = gen.generate([QUESTIONS[1]], 1, sampling, [7])[0]
    together = gen.generate([QUESTIONS[0], QUESTIONS[2], QUESTIONS[1]], 1, sampling, [3, 4, 7])
    assert together[2] == alone and alone[0]
    assert together[0] != together[1]


def test_reply_text_is_decoded_without_clean_up(tiny_model):
    """The text of a reply is the decoding of its sampled ids, spaces as sampled: a tokenizer that
    asks for clean-up (" ." -> ".") must not change what the next turn's prompt and the answer
    parser read."""
    from drift.backends.hf import decode_reply
    from drift.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    tokenizer.clean_up_tokenization_spaces = True
    ids = tokenizer.encode("It is 4 . I do n't know", add_special_tokens=False)
    text, _, _ = decode_reply(tokenizer, ids, [])
    assert text == tokenizer.decode(ids, clean_up_tokenization_spaces=False) == "It is 4 . I do n't know"
