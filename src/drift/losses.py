"""Losses (torch). Shapes: b = batch, s = sequence, k = kept positions, v = vocabulary.

The DRIFT objective for one optimizer step over a global batch G of examples i (over every
micro-batch and every data-parallel rank) is

    L = sum_{i in G} w_i * nll_i / D,   nll_i = mean over i's completion tokens of -log p(y_t | y_<t, x)

with D = |G| (``reduction="mean"``, the reference code's) or D = sum_{i in G} w_i
(``reduction="weighted"``, a self-normalised estimator). This module gives the per-example terms
w_i * nll_i (:func:`weighted_nll_terms`); drift.trainer divides their sum by D computed for the
whole global batch before the first micro-batch, so gradient accumulation and data parallelism
give the same gradient as one big batch (the usual bug is dividing each micro-batch by its own
size). Online RL uses the same terms with advantages A_i as weights (w_i * nll_i = -A_i * mean
log p: REINFORCE with a baseline), plus an optional KL penalty; when it updates several times on
one round it uses PPO's clipped surrogate instead (:func:`clipped_pg_terms`), whose gradient at
the first update (ratio 1) is that same policy gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label) at every kept position, and the 0/1 mask of trained positions; both (b, k).

    >>> logp, mask = token_logprobs(torch.zeros(1, 2, 4), torch.tensor([[IGNORE, 1]]))
    >>> round(logp[0, 1].item(), 6), mask.tolist()      # log(1/4) at the one trained position
    (-1.386294, [[0.0, 1.0]])
    """
    mask = (labels != IGNORE).float()
    logp = -F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.clamp(min=0).reshape(-1), reduction="none"
    ).view(labels.shape)
    return logp, mask


def per_sample_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean negative log-likelihood of each sample, and its number of label tokens.

    ``logits``: shape (b, k, v), the model's outputs at the *last* k positions of the sequence;
    ``labels``: shape (b, k), the tokens those positions predict (``IGNORE`` = not trained), already
    shifted so ``labels[:, j]`` is the target of ``logits[:, j]``. Returns two (b,) tensors.

    >>> logits = torch.zeros(1, 3, 4)                  # uniform over 4 tokens: nll = log 4 each
    >>> nll, n = per_sample_nll(logits, torch.tensor([[IGNORE, 2, 3]]))
    >>> round(nll.item(), 6), n.item()
    (1.386294, 2)
    """
    logp, mask = token_logprobs(logits, labels)
    return -masked_mean(logp, mask), mask.sum(-1).long()


def completion_logits(model, batch) -> torch.Tensor:
    """The model's logits at the last k positions of a :func:`drift.examples.collate` batch, aligned
    with its labels: shape (b, k, v), ``[:, j]`` predicts ``labels[:, j]``. A batch with a prefix
    tree (``packed``) runs as that tree: the same logits up to rounding, shared tokens run once."""
    if getattr(batch, "packed", None) is not None:  # the rows as one prefix tree (drift.packing)
        from drift.packing import packed_logits

        return packed_logits(model, batch.packed)
    input_ids, attention, positions, k = batch[0], batch[1], batch[2], batch[5]
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=k + 1)
    return out.logits[:, :-1]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of each sample's values over its trained positions, (b, k) -> (b,): the token-mean
    log-probability when ``values`` are :func:`token_logprobs`.

    >>> masked_mean(torch.tensor([[-1.0, -3.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    tensor([-2.])
    """
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over trained tokens of the k3 estimator of KL(pi || pi_ref),
    ``exp(ref - logp) - (ref - logp) - 1`` (>= 0; Schulman, "Approximating KL divergence", 2020).
    As a loss on the policy's own samples its value estimates KL(pi || pi_ref), but its gradient,
    ``E_pi[(1 - pi_ref / pi) grad log pi]``, is that of KL(pi_ref || pi): the penalty of GRPO's paper
    and of TRL's ``GRPOTrainer`` (``beta``), not a gradient of the KL its value reports.

    Shapes: ``logp``, ``ref_logp``, ``mask``: (b, k). Returns (b,).

    >>> kl_k3(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -2.0]]), torch.ones(1, 2))
    tensor([0.])
    """
    diff = (ref_logp - logp) * mask
    return masked_mean(diff.exp() - diff - 1, mask)


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per example, and the number of tokens where the clip acted.

    With ``r_t = exp(logp_t - old_t)`` and advantage ``A`` of the example,
    ``term = -mean over trained tokens t of min(r_t A, clip(r_t, 1 - eps, 1 + eps) A)``
    (Schulman et al. 2017; the token mean per example, then the caller's mean over examples, as in
    every drift loss). Where the clipped branch is the smaller one the token has no gradient: the
    policy has moved far enough in the advantage's direction. Shapes: (b, k) and ``advantages`` (b,).

    >>> zero = torch.zeros(1, 1)
    >>> t, c = clipped_surrogate(zero, zero, torch.ones(1, 1), torch.tensor([2.0]), eps=0.2)
    >>> t.tolist(), c.item()              # r = 1: the term is -A
    ([-2.0], 0.0)
    """
    ratio = (logp - old_logp).clamp(-20.0, 20.0).exp()  # a log-ratio beyond +-20 is clipped anyway; exp stays finite
    adv = advantages.to(logp.device)[:, None]
    unclipped, clipped = ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv
    acted = (clipped < unclipped) * mask
    return -masked_mean(torch.minimum(unclipped, clipped), mask), acted.sum()


def _reference_kl(logp, mask, ref_model, batch, ref_autocast) -> torch.Tensor:
    """Per-example k3 KL of the policy to ``ref_model`` on the batch's trained tokens (no gradient
    through the reference); ``ref_autocast``: a function giving a fresh mixed-precision context."""
    import contextlib

    with torch.no_grad(), ref_autocast() if ref_autocast else contextlib.nullcontext():
        ref_logp, _ = token_logprobs(completion_logits(ref_model, batch), batch[3])
    return kl_k3(logp, ref_logp, mask)


def clipped_pg_terms(model, batch, clip_ratio: float, ref_model=None, kl_coef: float = 0.0, ref_autocast=None):
    """Per-example terms of online RL's update on reused samples: :func:`clipped_surrogate` with the
    batch's weights as advantages and its ``old_logp`` (log-probs under the policy that sampled,
    drift.examples.collate), plus ``kl_coef`` times the k3 KL to ``ref_model`` when one is given.
    Returns ``(terms, stats)`` like :func:`weighted_nll_terms`, with ``clipped_tokens`` added."""
    if batch[6] is None:
        raise ValueError("clipped_pg_terms needs the examples' old_logp (log-probs of the sampling policy)")
    logp, mask = token_logprobs(completion_logits(model, batch), batch[3])
    terms, clipped = clipped_surrogate(logp, batch[6].to(logp.device), mask, batch[4], clip_ratio)
    nll = -masked_mean(logp, mask).detach()
    stats = {"nll_sum": nll.sum(), "trained_tokens": mask.sum(), "clipped_tokens": clipped}
    if ref_model is not None:
        kl = _reference_kl(logp, mask, ref_model, batch, ref_autocast)
        terms = terms + kl_coef * kl
        stats["kl_sum"] = kl.detach().sum()
    return terms, stats


def weighted_nll_terms(model, batch, ref_model=None, kl_coef: float = 0.0, ref_autocast=None):
    """Per-example loss terms of a :func:`drift.examples.collate` batch, and stats to add up.

    ``c_i = w_i * nll_i`` (token-mean NLL of the completion), plus ``kl_coef * KL_i`` (k3, against
    ``ref_model``, run without gradients in a fresh ``ref_autocast()``) when a reference model is given.
    Returns ``(c, stats)``: c of shape (b,); stats ``nll_sum``, ``trained_tokens`` (and ``kl_sum``)
    as scalar tensors. An example with no trained token contributes 0 to every term.
    """
    logp, mask = token_logprobs(completion_logits(model, batch), batch[3])
    nll = -masked_mean(logp, mask)
    terms = batch[4].to(nll.device) * nll
    stats = {"nll_sum": nll.detach().sum(), "trained_tokens": mask.sum()}
    if ref_model is not None:
        kl = _reference_kl(logp, mask, ref_model, batch, ref_autocast)
        terms = terms + kl_coef * kl
        stats["kl_sum"] = kl.detach().sum()
    return terms, stats
