"""Benchmark: what training would save by running a prompt's shared prefix through the model once.

    python benchmarks/shared_prefix.py --weighted W.jsonl --model M [--group 8] [--dtype float32 bfloat16]

A DRIFT example is a trajectory's last assistant turn with its whole history as the prompt, so the
K trajectories of a problem repeat the same start (system turn, question, often the first reply):
drift train runs it through the model, forward and backward, once per example. This measures the
alternative on real data, outside drift's trainer (a feasibility figure, not a drift feature yet):

- over the whole file (examples of weight >= 1e-4, about what drift train keeps): the tokens
  forwarded, and those saved if each problem's examples shared their common prefix (capped one
  token before the shortest one's target);
- for the problem with the most kept examples (``--group`` of them): one forward + backward of the
  summed token NLL of their targets, plain (a right-padded batch, as one micro-batch) against
  shared (the prefix once, its KV cache expanded to every row, the suffixes on top of it: the
  gradient reaches the prefix through the cache), interleaved twice per dtype; the loss of each,
  and the largest gradient difference against the largest gradient.

Prints the machine (CPU model, ``torch.backends.cpu.get_cpu_capability()``).
"""

from __future__ import annotations

import argparse
import collections
import json
import time

from machine import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weighted", required=True, help="a drift weight output (weighted.jsonl)")
    parser.add_argument("--model", required=True, help="the model the examples are trained on")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from drift.examples import build_examples
    from drift.models import load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    print(f"machine: {describe()}")
    tokenizer = load_tokenizer(args.model)
    groups = collections.defaultdict(list)
    for i, line in enumerate(open(args.weighted)):
        record = json.loads(line)
        if (record.get("weight") or 0) >= 1e-4:
            groups[record["prompt_id"]] += build_examples(record, tokenizer, index=i)
    total = saved = 0
    for examples in groups.values():
        total += sum(len(e.input_ids) for e in examples)
        saved += _prefix(examples) * (len(examples) - 1)
    print(f"{sum(map(len, groups.values()))} examples of {len(groups)} problems: {total} tokens forwarded; "
          f"sharing each problem's common prefix saves {saved} ({saved / total:.0%})")  # fmt: skip
    group = max(groups.values(), key=len)[: args.group]
    ids = [list(e.input_ids) for e in group]
    shared = _prefix(group)
    print(f"one micro-batch: {len(ids)} examples of one problem, {sum(map(len, ids))} tokens, shared prefix {shared}")
    for dtype in args.dtype:
        model = load_model(args.model).to(getattr(torch, dtype)).train()
        grads, losses, seconds = {}, {}, collections.defaultdict(list)
        for how in ("plain", "shared") * 2:
            model.zero_grad()
            start = time.perf_counter()
            loss = _loss(model, group, ids, shared if how == "shared" else 0, tokenizer.pad_token_id)
            loss.backward()
            seconds[how].append(time.perf_counter() - start)
            losses[how] = loss.item()
            grads[how] = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        diff = (grads["plain"] - grads["shared"]).abs().max().item()
        print(
            f"{dtype}: forward + backward plain {min(seconds['plain']):.2f} s, shared {min(seconds['shared']):.2f} s; "
            f"loss {losses['plain']:.4f} / {losses['shared']:.4f}; largest gradient difference {diff:.2g} "
            f"(largest gradient {grads['plain'].abs().max().item():.3g})"
        )


def _prefix(examples) -> int:
    """The examples' common token prefix, ending at least one token before the earliest target."""
    from drift.backends.hf_cache import common_prefix

    first = tuple(examples[0].input_ids)
    common = min((common_prefix(first, tuple(e.input_ids)) for e in examples[1:]), default=0)
    return max(0, min(common, min(e.n_prompt for e in examples) - 1)) if len(examples) > 1 else 0


def _loss(model, group, ids, shared: int, pad: int):
    """Summed NLL of every example's target tokens; the first ``shared`` tokens run once."""
    import torch
    from transformers import DynamicCache

    rows = len(ids)
    kwargs = {}
    if shared:
        prefix = model(input_ids=torch.tensor([ids[0][:shared]]), use_cache=True).cache
        kwargs["cache"] = DynamicCache(
            [(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1)) for layer in prefix.layers]
        )
    rest = [s[shared:] for s in ids]
    width = max(map(len, rest))
    x = torch.tensor([s + [pad] * (width - len(s)) for s in rest])
    mask = torch.tensor([[1] * (shared + len(s)) + [0] * (width - len(s)) for s in rest])
    positions = (torch.arange(width) + shared).expand(rows, -1)
    logits = model(input_ids=x, attention_mask=mask, position_ids=positions, **kwargs).logits.float()
    total = 0
    for r, example in enumerate(group):
        targets = torch.tensor(ids[r][example.n_prompt :])
        scores = torch.log_softmax(logits[r, example.n_prompt - 1 - shared : len(ids[r]) - 1 - shared], -1)
        total = total - scores.gather(1, targets[:, None]).sum()
    return total


if __name__ == "__main__":
    main()
