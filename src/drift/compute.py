"""What a run cost, machine-independently: tokens through the model, and FLOPs estimated from them.

Every stage counts the tokens it ran through the model (rollout and rl summaries: prefilled and
generated; train and rl: trained, i.e. every prompt and completion token forwarded and
back-propagated in training, not only the labelled ones; rl: scored and reference forwards). From them,

    FLOPs ~= 2 N (prefilled + generated + scored + reference) + 6 N trained

with N the number of parameters of the model (tied embeddings counted once): a forward pass costs
about 2N FLOPs per token and a training step (forward + backward) about 6N (Kaplan et al. 2020,
"Scaling laws for neural language models", section 2.1). The estimate ignores attention's
quadratic term (small at these lengths: a few hundred tokens against d_model x layers) and the
LM head's saving where only the last positions get logits. It is the same formula for every
method, so the comparison is fair even where the absolute number is a little off; wall seconds
are reported next to it, and depend on the machine.

Two counts of the same work:

- **nominal** (:func:`flops_of`): scored, reference and trained tokens are every token of every
  example forwarded, as if each ran alone.
- **as run** (:func:`flops_as_run`): those three are the tokens actually run
  (``<field>_forwarded_tokens``): drift's trainer runs a micro-batch's shared prefixes once
  (drift.packing), so a group of trajectories that share a prompt costs less than its examples.

Sampling (prefilled, generated) is counted as run in both: after the backend's prefix sharing and
KV-cache reuse, the tokens the model ran. Online RL spends most of its compute training and
scoring, offline DRIFT most of it sampling, so the nominal count charges online RL more for the
same work: compare methods as run, and read the nominal count as the cost without prefix trees.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from drift import DriftError

FORWARD, TRAIN = 2, 6  # FLOPs per parameter per token

TOKEN_FIELDS = ("prefilled", "generated", "scored", "reference", "trained")


def flops(parameters: int, *, prefilled=0, generated=0, scored=0, reference=0, trained=0) -> float:
    """``2 N (prefilled + generated + scored + reference) + 6 N trained``.

    >>> flops(100, prefilled=10, generated=5, trained=2)    # 2*100*15 + 6*100*2
    4200.0
    """
    return float(FORWARD * parameters * (prefilled + generated + scored + reference) + TRAIN * parameters * trained)


def flops_of(parameters: int, counts: dict) -> float:
    """:func:`flops` of a counter dict with ``<field>_tokens`` keys (missing ones count 0), the
    layout of drift rl's summaries and the study's compute.

    >>> flops_of(100, {"prefilled_tokens": 10, "generated_tokens": 5, "trained_tokens": 2, "seconds": 9})
    4200.0
    """
    return flops(parameters, **{f: counts.get(f"{f}_tokens", 0) for f in TOKEN_FIELDS})


SHARED = ("scored", "reference", "trained")  # forwards whose shared prefixes a prefix tree runs once


def flops_as_run(parameters: int, counts: dict) -> float | None:
    """:func:`flops_of` with the scored, reference and trained tokens actually run
    (``<field>_forwarded_tokens``); ``None`` where one of them is missing but its nominal count is
    not zero (a count kept before drift counted forwarded tokens: not guessed).

    >>> flops_as_run(100, {"prefilled_tokens": 10, "trained_tokens": 4, "trained_forwarded_tokens": 3})
    3800.0
    >>> flops_as_run(100, {"trained_tokens": 4}) is None
    True
    """
    run = {f"{f}_tokens": counts.get(f"{f}_tokens", 0) for f in TOKEN_FIELDS}
    for f in SHARED:
        forwarded = counts.get(f"{f}_forwarded_tokens")
        if forwarded is None and run[f"{f}_tokens"]:
            return None
        run[f"{f}_tokens"] = forwarded or 0
    return flops_of(parameters, run)


def count_parameters(model_dir: str | Path) -> int:
    """Parameters stored in a model folder's safetensors files, read from their headers (no weights
    loaded); a tied LM head is stored once, so it is counted once. (A LoRA adapter folder holds the
    adapter only: pass the merged model.)"""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise DriftError(f"no .safetensors file in {model_dir}: cannot count the model's parameters")
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                n = 1
                for d in meta["shape"]:
                    n *= d
                total += n
    return total
