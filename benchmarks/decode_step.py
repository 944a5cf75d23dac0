"""Benchmark: one decode step on a CPU, transformers' ``sdpa`` against drift's packed decode attention.

    python benchmarks/decode_step.py [--rows 64] [--cached 100 300] [--threads 2]

A decode step of a batch without padding has no attention mask, and transformers' ``sdpa`` then
asks torch for grouped-query attention (``enable_gqa=True``); drift's hf backend runs
``drift_sdpa`` on a CPU instead (drift.backends.hf_decode.packed_decode_attention). Two
measurements, each the median of repeats, for bfloat16 and float32:

- SDPA alone on SmolLM2-135M's shapes (9 query, 3 key/value heads, 64 dims): ``enable_gqa=True``
  against the query heads packed per key/value head;
- one decode step of SmolLM2-135M-Instruct in bfloat16 (``--rows`` rows, ``--cached`` tokens
  already in the KV cache, no padding) with ``sdpa`` and with ``drift_sdpa``, and the largest
  logit difference (drift packs only in half precision: in float32 the kernels are as fast);
- ``--steps`` steps of drift's decode loop (drift.backends.hf_decode.decode, greedy, no row ending)
  on top of a ``--cached``-token prompt cache, bfloat16, its cache layers writing each step in
  place (drift.backends.hf_cache.GrowingLayer) against transformers' ``DynamicLayer`` (a
  ``torch.cat`` copy of the whole cache per step), interleaved, and whether the tokens agree.

Prints the machine (CPU model, ``torch.backends.cpu.get_cpu_capability()``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

from machine import describe


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--cached", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    from drift.backends.hf_decode import use_packed_decode_attention
    from drift.models import load_model, resolve_model

    torch.set_num_threads(args.threads)
    print(f"machine: {describe()}")
    b = args.rows
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for dtype in (torch.bfloat16, torch.float32):
        for length in args.cached:
            q = torch.randn(b, 9, 1, 64, dtype=dtype)
            k, v = (torch.randn(b, 3, length, 64, dtype=dtype) for _ in range(2))
            gqa = median_ms(partial(sdpa, q, k, v, scale=0.125, enable_gqa=True), 20)
            packed = median_ms(partial(sdpa, q.reshape(b, 3, 3, 64), k, v, scale=0.125), 20)
            print(f"SDPA alone, {dtype}, {b} rows x {length} cached: enable_gqa {gqa:.2f} ms, packed {packed:.2f} ms")
    model = load_model(resolve_model("smollm2-135m")).to(dtype=torch.bfloat16).eval()  # drift packs in half precision
    for length in args.cached:
        logits, ms = {}, {}
        for implementation in ("sdpa", "drift_sdpa"):
            if implementation == "drift_sdpa":
                use_packed_decode_attention(model)
            else:
                model.set_attn_implementation("sdpa")
            torch.manual_seed(0)
            ids = torch.randint(100, 1000, (b, length))
            inputs = {
                "input_ids": torch.randint(100, 1000, (b, 1)),
                "attention_mask": torch.ones(b, length + 1, dtype=torch.long),
                "position_ids": torch.full((b, 1), length),
                "use_cache": True,
                "logits_to_keep": 1,
            }
            with torch.no_grad():
                cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).cache
                ms[implementation] = median_ms(partial(_step, model, cache, inputs), 5)
                logits[implementation] = _step(model, cache, inputs).float()
        diff = (logits["sdpa"] - logits["drift_sdpa"]).abs().max().item()
        print(
            f"decode step, bfloat16, {b} rows x {length} cached: sdpa {ms['sdpa']:.1f} ms, "
            f"drift_sdpa {ms['drift_sdpa']:.1f} ms; largest logit difference {diff:.2g}"
        )

    for length in args.cached:
        _loop(model, b, length, args.steps, args.repeats)


def _loop(model, rows: int, length: int, steps: int, repeats: int) -> None:
    """drift's decode loop, ``steps`` steps, cache layers growing in place against ``torch.cat``."""
    import contextlib

    import torch

    import drift.backends.hf_decode as hf_decode

    torch.manual_seed(0)
    ids, mask = torch.randint(100, 1000, (rows, length + 1)), torch.ones(rows, length + 1, dtype=torch.long)
    with torch.no_grad():
        prompt = model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1).cache
    in_place = hf_decode.with_room
    seconds: dict = {"in place": [], "torch.cat": []}
    tokens = {}
    for _ in range(repeats):
        for how in seconds:
            hf_decode.with_room = in_place if how == "in place" else (lambda cache, room: cache)
            cache = type(prompt)([(layer.keys.clone(), layer.values.clone()) for layer in prompt.layers])
            start = time.perf_counter()
            tokens[how] = hf_decode.decode(
                model, "cache", ids, mask, cache, max_new_tokens=steps, end_ids=[], device="cpu",
                choose=lambda logits, live: logits.argmax(-1), autocast=contextlib.nullcontext(),
                on_end=lambda *a: None, last_logits_only=True,
            )  # fmt: skip
            seconds[how].append(time.perf_counter() - start)
    hf_decode.with_room = in_place
    each = {how: 1000 * statistics.median(s) / steps for how, s in seconds.items()}
    print(
        f"decode loop, bfloat16, {rows} rows, {length} cached + {steps} steps: cache in place "
        f"{each['in place']:.0f} ms/step, torch.cat {each['torch.cat']:.0f} ms/step; "
        f"same tokens: {tokens['in place'] == tokens['torch.cat']}"
    )


def _step(model, cache, inputs):
    """One decode step on top of ``cache``, which is then cut back: every repeat decodes the same step."""
    out = model(cache=cache, **inputs)
    cache.crop(-1)
    return out.logits


if __name__ == "__main__":
    main()
