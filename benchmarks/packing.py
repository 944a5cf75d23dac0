"""Benchmark: a training step's micro-batches padded against as prefix trees (drift.packing).

    python benchmarks/packing.py --weighted W.jsonl --model M [--steps 6] [--batch-size 16]
        [--micro-batch-size 8] [--dtype float32 bfloat16] [--repeats 2]

The micro-batches are the ones ``drift train`` runs: examples built from the file, steps planned
with seed 0 (drift.examples.plan_batches), negligible weights skipped (the default share), each
step sorted by length and cut into micro-batches. For each micro-batch and dtype: one forward and
backward of its weighted NLL terms (drift.losses.weighted_nll_terms, the training step's loss), as
the padded batch and as its prefix tree, interleaved ``--repeats`` times (the median counts). It
prints, per micro-batch, the padded tokens (rows x width), the tree's nodes, both times and the loss
of each; at the end the totals, the speed-up as a function of the tree's saving, and the largest
gradient difference of the first micro-batch against its largest gradient. The tree is timed
whatever drift.packing.worth_packing would say, next to that estimate (the measured speed-ups set
``drift.packing.MASKED_ATTENTION_SLOWDOWN``).

Prints the machine (CPU model, ``torch.backends.cpu.get_cpu_capability()``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from machine import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weighted", required=True, help="a drift weight output (weighted.jsonl)")
    parser.add_argument("--model", required=True, help="the model the examples are trained on")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of the first epoch to time")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from drift.config import TrainConfig
    from drift.examples import build_examples, collate, plan_batches, split_micro_batches, to_forward
    from drift.losses import weighted_nll_terms
    from drift.models import load_model, load_tokenizer
    from drift.packing import pack_rows, pair_cost

    torch.set_num_threads(args.threads)
    print(f"machine: {describe()}")
    tokenizer = load_tokenizer(args.model)
    examples = []
    for i, line in enumerate(open(args.weighted)):
        examples += build_examples(json.loads(line), tokenizer, index=i)
    share = TrainConfig.skip_weight_share
    micro = []
    for step in plan_batches(len(examples), args.batch_size, seed=0, epoch=0)[: args.steps]:
        forward, _ = to_forward([examples[i] for i in step], share)
        micro += split_micro_batches(forward, args.micro_batch_size, 1, 0)
    model = load_model(args.model)
    model.train()
    cost = pair_cost(model)
    print(f"pair_cost {cost:.3g}")
    pad = tokenizer.pad_token_id
    for dtype in args.dtype:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
        totals = {"padded": 0, "nodes": 0, "plain": 0.0, "tree": 0.0}
        print(f"\n{dtype}: {len(micro)} micro-batches of {args.steps} steps")
        print("| rows | padded tokens | tree nodes | plain s | tree s | speed-up | estimate | loss plain | loss tree |")
        print("|---|---|---|---|---|---|---|---|---|")
        with autocast:  # one untimed pass: the first forward of a process pays for allocations
            weighted_nll_terms(model, collate(micro[0], pad))[0].sum().backward()
        for n, mb in enumerate(micro):
            plain = collate(mb, pad)
            tree = plain._replace(packed=pack_rows([e.input_ids for e in mb], plain.k))
            times: dict[str, list[float]] = {"plain": [], "tree": []}
            losses, grads = {}, {}
            for _ in range(args.repeats):
                for name, batch in (("plain", plain), ("tree", tree)):
                    model.zero_grad(set_to_none=True)
                    start = time.perf_counter()
                    with autocast:
                        terms, _ = weighted_nll_terms(model, batch)
                    terms.sum().backward()
                    times[name].append(time.perf_counter() - start)
                    losses[name] = terms.sum().item()
                    if n == 0:
                        grads[name] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
            padded = len(mb) * plain.input_ids.shape[1]
            nodes = tree.packed.n_nodes
            t_plain, t_tree = statistics.median(times["plain"]), statistics.median(times["tree"])
            totals["padded"] += padded
            totals["nodes"] += nodes
            totals["plain"] += t_plain
            totals["tree"] += t_tree
            width = plain.input_ids.shape[1]
            estimate = len(mb) * (width + width**2 * cost) / (nodes + nodes**2 * cost)
            print(f"| {len(mb)} | {padded} | {nodes} | {t_plain:.2f} | {t_tree:.2f} | {t_plain / t_tree:.2f}x | "
                  f"{estimate:.2f}x | {losses['plain']:.4f} | {losses['tree']:.4f} |")  # fmt: skip
            if n == 0:
                diff = max((a - b).abs().max().item() for a, b in zip(grads["plain"], grads["tree"]))
                top = max(a.abs().max().item() for a in grads["plain"])
                grad_note = f"first micro-batch: largest gradient difference {diff:.3g} of a largest gradient {top:.3g}"
        print(f"total: {totals['padded']} padded tokens, {totals['nodes']} tree nodes "
              f"({1 - totals['nodes'] / totals['padded']:.0%} saved); plain {totals['plain']:.1f} s, "
              f"tree {totals['tree']:.1f} s ({totals['plain'] / totals['tree']:.2f}x)")  # fmt: skip
        print(grad_note)


if __name__ == "__main__":
    main()
