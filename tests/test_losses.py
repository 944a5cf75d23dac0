"""The loss terms against a plain full forward pass, and the KL estimator by hand."""

import math

import pytest

torch = pytest.importorskip("torch")

from drift.examples import Example, build_examples, collate  # noqa: E402
from drift.losses import kl_k3, weighted_nll_terms  # noqa: E402
from drift.models import load_model, load_tokenizer  # noqa: E402
from factories import make_record  # noqa: E402


def test_weighted_terms_equal_a_full_forward_per_example(tiny_model):
    """w_i * mean NLL of i's completion, computed on the last k positions only, equals the same
    number from one unpadded forward pass per example over the whole sequence."""
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model).eval()
    filler = build_examples(make_record("c", 0, ["7"], weight=1.0), tok)[0].input_ids
    examples = [
        build_examples(make_record("a", 0, ["4", "5"], 2, weight=0.5), tok)[0],
        build_examples(make_record("b", 0, ["123456"], weight=2.0), tok)[0],
        Example(filler, len(filler), 1.0, -1),  # trains no token
    ]
    with torch.no_grad():
        terms, stats = weighted_nll_terms(model, collate(examples, tok.pad_token_id))
        expected = []
        for e in examples[:2]:
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0].float()
            logp = torch.log_softmax(logits[e.n_prompt - 1 : -1], -1)
            target = torch.tensor(e.input_ids[e.n_prompt :])
            expected.append(e.weight * -logp[torch.arange(len(target)), target].mean().item())
    assert terms[:2].tolist() == pytest.approx(expected, rel=1e-5)
    assert terms[2].item() == 0.0
    assert stats["trained_tokens"].item() == sum(e.n_completion for e in examples[:2])


def test_kl_k3_by_hand():
    # logp = log 0.5, ref = log 0.25 at one token: r = ref - logp = log 0.5; k3 = 0.5 - log 0.5 - 1
    logp, ref = torch.tensor([[math.log(0.5), 0.0]]), torch.tensor([[math.log(0.25), 5.0]])
    mask = torch.tensor([[1.0, 0.0]])  # the second position is not trained: its values do not count
    assert kl_k3(logp, ref, mask).item() == pytest.approx(0.5 - math.log(0.5) - 1, rel=1e-6)
    r = torch.randn(4, 6)
    assert (kl_k3(r, torch.randn(4, 6), torch.ones(4, 6)) >= 0).all()


def test_clipped_surrogate_by_hand():
    """PPO's per-token surrogate -min(r A, clip(r, 1-eps, 1+eps) A) with r = exp(logp - old), averaged
    over each example's trained tokens; where the clip binds the gradient is zero."""
    torch = pytest.importorskip("torch")
    from drift.losses import clipped_surrogate

    old = torch.tensor([[0.0, math.log(0.5), 0.0]])
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0]], requires_grad=True)  # r = 1.5, 1, (masked)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.tensor([1.0])
    terms, clipped = clipped_surrogate(logp, old, mask, adv, eps=0.2)
    # token 1: min(1.5, 1.2) = 1.2 (clipped); token 2: r = 1 -> 1; mean over 2 tokens, negated
    assert terms.item() == pytest.approx(-(1.2 + 1.0) / 2)
    assert clipped.item() == 1.0  # one token where the clip acted
    terms.sum().backward()
    # d/dlogp of -r A / 2 is -r A / 2: zero on the clipped token, -0.5 on the other, 0 on the masked one
    assert logp.grad[0].tolist() == pytest.approx([0.0, -0.5, 0.0])
    # a negative advantage is not clipped above: min(-1.5, -1.2) = -1.5 keeps the gradient
    logp.grad = None
    terms, clipped = clipped_surrogate(logp, old, mask, -adv, eps=0.2)
    assert terms.item() == pytest.approx((1.5 + 1.0) / 2) and clipped.item() == 0.0
    terms.sum().backward()
    assert logp.grad[0].tolist() == pytest.approx([0.75, 0.5, 0.0])


def test_clipped_terms_at_ratio_one_have_the_policy_gradient_of_weighted_nll(tiny_model):
    """With old log-probs from the same model (r = 1), the clipped objective's gradient is exactly
    that of A * token-mean NLL: the first update of a round is REINFORCE with a baseline."""
    torch = pytest.importorskip("torch")
    from drift.losses import clipped_pg_terms, completion_logits, token_logprobs

    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    recs = [make_record("p", 0, ["5"], 1), make_record("p", 1, ["4", "5"], 2)]
    exs = [build_examples(r, tok, weight=a)[0] for r, a in zip(recs, [0.7, -0.7])]
    with torch.no_grad():
        batch = collate(exs, tok.pad_token_id)
        logp, _ = token_logprobs(completion_logits(model, batch), batch[3])
    for e, row in zip(exs, logp):
        e.old_logp = row[-e.n_completion :].tolist()
    batch = collate(exs, tok.pad_token_id)
    grads = []
    for fn in (weighted_nll_terms, lambda m, b: clipped_pg_terms(m, b, clip_ratio=0.2)):
        model.zero_grad()
        terms, stats = fn(model, batch)
        terms.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert stats["clipped_tokens"].item() == 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert grads[0].abs().sum() > 0
