"""Benchmark: decode speed of `generate` by batch size and precision (no drift code in the loop).

    python benchmarks/decode.py [--new-tokens 24] [--threads 2]

SmolLM2-135M-Instruct, one short arithmetic prompt repeated B times, exactly ``--new-tokens``
greedy tokens each, for B = 16, 32, 64, 128 and three precisions: float32 weights, float32 weights
in bf16 autocast (what training does), bf16 weights (what drift's hf backend does with its own
model under --dtype bfloat16). Prints generated tokens per second and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import time

from machine import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from drift.models import load_model, load_tokenizer, resolve_model

    torch.set_num_threads(args.threads)
    print(f"machine: {describe()}")
    path = resolve_model("smollm2-135m")
    tok = load_tokenizer(path)
    message = [{"role": "user", "content": "What is 12+34? Answer in <answer></answer> tags."}]
    prompt = tok.apply_chat_template(message, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    fp32, bf16 = load_model(path).eval(), load_model(path).to(torch.bfloat16).eval()

    def speed(model, autocast: bool, rows: int) -> float:
        ids = prompt["input_ids"].repeat(rows, 1)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with torch.no_grad(), context:
            start = time.perf_counter()
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        return rows * args.new_tokens / (time.perf_counter() - start)

    for rows in (16, 32, 64, 128):
        print(
            f"{rows} rows: float32 {speed(fp32, False, rows):.0f}, float32 in bf16 autocast "
            f"{speed(fp32, True, rows):.0f}, bf16 weights {speed(bf16, False, rows):.0f} tokens/s"
        )


if __name__ == "__main__":
    main()
