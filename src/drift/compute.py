"""What a run cost, machine-independently: tokens through the model, and FLOPs estimated from them.

Every stage counts the tokens it ran through the model (rollout and rl summaries: prefilled and
generated; train and rl: trained, i.e. every prompt and completion token forwarded and
back-propagated in training, not only the labelled ones; rl: scored and reference forwards). From them,

    FLOPs ~= 2 N (prefilled + generated + scored + reference) + 6 N trained

with N the number of parameters of the model (tied embeddings counted once): a forward pass costs
about 2N FLOPs per token and a training step (forward + backward) about 6N (Kaplan et al. 2020,
"Scaling laws for neural language models", section 2.1). The estimate ignores the LM head's
saving where only the last positions get logits, and attention's quadratic term: a forward over
a sequence of n positions adds about 4 d_model n_layers n^2 FLOPs (QK^T and AV, every pair), i.e.
2 d_model n_layers n / N of its 2Nn (SmolLM2-135M: 2.6e-4 n, 4-5% at an example's ~150-200 tokens).
It is the same formula for every method; wall seconds are reported next to it, and depend on the
machine.

Two counts of the same work:

- **nominal** (:func:`flops_of`): scored, reference and trained tokens are every token of every
  example forwarded, as if each ran alone.
- **as run** (:func:`flops_as_run`): those three are the tokens actually run
  (``<field>_forwarded_tokens``): drift's trainer runs a micro-batch's shared prefixes once
  (drift.packing), so a group of trajectories that share a prompt costs less than its examples.

Sampling (prefilled, generated) is counted as run in both: after the backend's prefix sharing and
KV-cache reuse, the tokens the model ran. Online RL spends most of its compute training and
scoring, offline DRIFT most of it sampling, so the two counts differ most for online RL.

Both counts leave attention's quadratic term out, so both are lower bounds, and a prefix tree
pays that term over all its nodes under a dense mask. Computed from the token counts of GRPO in
the ``mixed`` study (SmolLM2-135M, seed 2's first 5 rounds: trees of ~1,000-1,100 nodes from
examples of ~150-200 tokens, 2.6e-4 of a token's 2N per attended pair), training as drift runs it
costs ~1.01-1.04x the nominal count with attention included, while the as-run count says 0.81x.
The nominal count is thus the closer one for drift's own trainer; the as-run count is what the
sharing would save if attention were free (drift.packing.worth_packing weighs the same pairs).
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


def known_counts(saved: dict | None) -> dict:
    """A saved counter dict (a checkpoint's compute, a line of ``rl_log.jsonl``) in this drift's
    layout. One kept before drift counted a forward's tokens as run has ``forwarded_tokens`` for the
    trained ones only, or none: a forwarded count it lacks is unknown (``None``, and so is
    :func:`flops_as_run`) unless its nominal count is 0; it is not guessed.

    >>> counts = known_counts({"scored_tokens": 0, "trained_tokens": 8, "forwarded_tokens": 6})
    >>> {k: v for k, v in counts.items() if "forwarded" in k}
    {'trained_forwarded_tokens': 6, 'scored_forwarded_tokens': 0, 'reference_forwarded_tokens': 0}
    >>> known_counts({"trained_tokens": 8})["trained_forwarded_tokens"] is None
    True
    """
    saved = dict(saved or {})
    if "forwarded_tokens" in saved:
        saved["trained_forwarded_tokens"] = saved.pop("forwarded_tokens")
    if saved:
        for f in SHARED:
            saved.setdefault(f"{f}_forwarded_tokens", None if saved.get(f"{f}_tokens") else 0)
    return saved


def count_parameters(model_dir: str | Path) -> int:
    """Parameters stored in a model folder's safetensors files, read from their headers (no weights
    loaded); a tied LM head is stored once, so it is counted once. A hub id is read from its snapshot
    in the local hub cache. (A LoRA adapter folder holds the adapter only: pass the merged model.)"""
    if not Path(model_dir).is_dir():
        model_dir = _cached_snapshot(str(model_dir))
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


def _cached_snapshot(repo_id: str) -> str:
    """The local folder of hub model ``repo_id`` (what ``from_pretrained`` loaded), never downloaded."""
    import huggingface_hub

    try:
        return huggingface_hub.snapshot_download(repo_id, local_files_only=True, allow_patterns=["*.safetensors"])
    except Exception as e:  # not cached, not a hub id, or no hub library: nothing to count
        raise DriftError(
            f"{repo_id} is no folder, and no snapshot of it is in the local hub cache ({type(e).__name__}): "
            "cannot count the model's parameters"
        ) from None
