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
