"""The hf backend's decode loop: a row leaves the batch at the step its reply ends.

transformers' ``generate`` runs every row of a batch until the last one ends: a row that wrote its
end token keeps going through the model, writing padding, while the batch's longest reply goes on.
Multi-turn rollouts are the worst case for that: on the study's seed-0 rollouts of SmolLM2-135M
(96% of 2,354 replies are 8-10 tokens, 8 reach the cap of 24), batches of 64 spent 41% of their
decode row-steps on rows that had already ended. :func:`decode` drops such a row (its KV cache
row, mask row and position) at the step it ends, after handing its cache to ``on_end`` (the
backend keeps it for the conversation's next turn, drift.backends.hf_cache). Caches with state
other than keys and values (linear attention, convolutions: hybrid models) keep ended rows in the
batch, as ``generate`` does, their tokens ignored.

Each step runs every live row's last token through the model with the cache (the first step: the
whole prompt, or its last column when a prefilled cache is given), reads the last position's
logits in float32, and takes ``choose(logits, rows)``: the next token of each live row. A row ends
at a token of ``end_ids`` (kept: it is part of the reply) or when it has ``max_new_tokens``. Rows
are never reordered, so each row's random numbers (drift.backends.hf._RowSampler) are the ones it
would draw in a full batch; the logits differ from a full batch's only by the rounding of another
batch shape (~1e-6 in float32).

The cache's plain layers become drift.backends.hf_cache.GrowingLayer as decoding starts (a
prefilled cache before the first step, one the model makes after it): each later step writes its
keys and values in place, where transformers' layers copy the whole cache.

Positions follow the mask: ``cumsum(mask) - 1`` over the prompt (left padding and the holes of a
reused cache sit at masked positions), then one more per step: where transformers' ``generate``
puts them.

Attention on a CPU (:func:`use_packed_decode_attention`). A decode step of a batch without padding
has no attention mask, and transformers' ``sdpa`` then asks torch for grouped-query attention
(``enable_gqa=True``), whose CPU kernel is slow in bfloat16: 14.7 ms against 2.9 ms for the same
attention with each key/value head's query heads packed as its queries (64 rows, 300 cached tokens,
SmolLM2-135M's 9 query / 3 key-value heads, 2-core EPYC with AVX512-BF16); a whole decode step of
that batch took 525 ms, 248 ms packed (float32: no consistent gain, so float32 keeps transformers'
path; benchmarks/decode_step.py). Batches with padding already take the packed form (transformers
packs when there is a mask). The hf backend's model on a CPU therefore runs ``drift_sdpa``:
:func:`packed_decode_attention` for a single unmasked half-precision query token, transformers'
``sdpa`` for everything else (prefill, training: unchanged). The setting stays on the model (drift
rl's policy is the trainer's own model: its training forwards, several tokens each, take the
``sdpa`` branch) and is not saved with it (transformers does not serialise it).
"""

from __future__ import annotations

from collections.abc import Callable

from drift.backends.hf_cache import base_model, full_attention, with_room


def packed_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' ``sdpa`` attention, but one half-precision query token without a mask over
    grouped key/value heads runs as plain SDPA with the ``g`` query heads of each key/value head as
    ``g`` queries (head ``h`` reads key/value head ``h // g``, as transformers' ``repeat_kv`` lays
    them out). In float32 torch's grouped kernel is as fast (0.71 vs 1.02 ms, 3.34 vs 3.32 ms:
    benchmarks/decode_step.py), so float32 stays on ``sdpa``.
    Returns ``(output (batch, 1, heads, dim), None)``."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    plain = any(kwargs.get(k) is not None for k in ("position_bias", "softcap"))
    half = query.dtype in (torch.bfloat16, torch.float16)
    if attention_mask is not None or query.shape[2] != 1 or groups == 1 or plain or dropout or not half:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    batch, heads, _, dim = query.shape
    packed = query.reshape(batch, heads // groups, groups, dim)
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, scale=scaling)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def use_packed_decode_attention(model) -> None:
    """Run ``model`` (a transformers model on a CPU) with :func:`packed_decode_attention`, registered
    as ``drift_sdpa``, if it runs ``sdpa``; other implementations are left as they are."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    base = base_model(model)
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return
    AttentionInterface.register("drift_sdpa", packed_decode_attention)
    AttentionMaskInterface.register("drift_sdpa", sdpa_mask)  # masks as for sdpa
    base.set_attn_implementation("drift_sdpa")


def _rows_can_leave(cache) -> bool:
    """Whether :meth:`batch_select_indices` drops rows of every layer's whole state: plain and
    sliding-window attention, whose state is keys and values. Linear-attention and convolution
    layers (hybrid models) keep other state; their ended rows stay in the batch, ignored."""
    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(
        full_attention(layer) or type(layer).__name__ == "DynamicSlidingWindowLayer" for layer in layers
    )


def decode(
    model,
    name: str,
    input_ids,
    attention,
    cache,
    *,
    max_new_tokens: int,
    end_ids,
    choose: Callable,
    autocast,
    on_end: Callable,
    device: str,
    last_logits_only: bool = False,
) -> list[list[int]]:
    """Each row's sampled ids, through its end token (or ``max_new_tokens`` of them).

    ``input_ids`` and ``attention`` (batch, width) are the left-padded prompts; ``cache`` (keyword
    ``name``), if not None, holds every column but the last (drift.backends.hf_cache.prefill).
    ``choose(logits, rows)`` returns the next token of the batch rows ``rows`` (their logits, in
    that order). ``on_end(cache, at, rows, ids)``: rows ``rows`` of the batch, at rows ``at`` of
    ``cache``, have ended with ``ids``; the cache then holds their prompt and all their ids but the
    last (never run through the model). ``last_logits_only``: the model's ``forward`` takes
    ``logits_to_keep`` (drift.backends.hf_cache.forward_keywords), so only the last column's logits
    are computed.
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    ends = set(end_ids)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    feed, feed_positions = (input_ids, positions) if cache is None else (input_ids[:, -1:], positions[:, -1:])
    mask = attention.to(device)
    next_position = positions[:, -1:].to(device) + 1
    feed, feed_positions = feed.to(device), feed_positions.to(device)
    extra = {"logits_to_keep": 1} if last_logits_only else {}
    if cache is not None:  # a prefilled cache: every step writes in place
        cache = with_room(cache, max_new_tokens)
    rows = list(range(len(input_ids)))  # batch row of each row of the cache
    out: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    with torch.no_grad(), autocast:  # entered once: leaving autocast empties its cache of cast weights
        while True:
            result = model(
                input_ids=feed,
                attention_mask=mask,
                position_ids=feed_positions,
                use_cache=True,
                **({name: cache} if cache is not None else {}),
                **extra,
            )
            fresh, cache = cache is None, getattr(result, name)
            if fresh:  # the prompts' cache, made by the model: later steps write in place
                cache = with_room(cache, max_new_tokens)
            active = [at for at, row in enumerate(rows) if not done[row]]
            logits = result.logits[:, -1].float()
            chosen = choose(logits[active] if len(active) < len(rows) else logits, [rows[at] for at in active])
            tokens = [out[row][-1] if done[row] else 0 for row in rows]  # an ended row kept in the batch: ignored
            ended = []
            for at, token in zip(active, chosen.tolist()):
                tokens[at] = token
                out[rows[at]].append(token)
                if token in ends or len(out[rows[at]]) >= max_new_tokens:
                    ended.append(at)
                    done[rows[at]] = True
            if ended:
                on_end(cache, ended, [rows[at] for at in ended], [out[rows[at]] for at in ended])
            if all(done):
                return out
            if ended and _rows_can_leave(cache):
                live = [at for at, row in enumerate(rows) if not done[row]]
                index = torch.tensor(live, device=mask.device)
                cache.batch_select_indices(index)
                mask, next_position = mask[index], next_position[index]
                rows, tokens = [rows[at] for at in live], [tokens[at] for at in live]
            feed = torch.tensor(tokens, device=mask.device).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            feed_positions, next_position = next_position, next_position + 1
