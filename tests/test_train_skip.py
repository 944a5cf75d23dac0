"""drift train does not forward examples of negligible weight (drift.train, note 4): the gradient
keeps exactly the other terms over the same D, the summary says what was skipped, compute drops."""

import json

import pytest

torch = pytest.importorskip("torch")

from drift.config import TrainConfig  # noqa: E402
from drift.options import resolve  # noqa: E402
from test_train import params, train, weighted_file  # noqa: E402

# 8 examples, 4 of them negligible (exactly 0, or 1e-12); record i has 1 + i % 3 turns, so the
# longest examples (i = 2, 5) are among the skipped ones: forwarding them widens their micro-batch
WEIGHTS = [1.0, 0.5, 0.0, 2.0, 1e-12, 0.0, 1.5, 1e-12]
SGD = dict(batch_size=8, micro_batch_size=2, max_steps=1)


def examples_of(data, model):
    from drift.examples import build_examples
    from drift.models import load_tokenizer
    from drift.records import read_records

    tok = load_tokenizer(model)
    return [build_examples(rec, tok)[0] for rec in read_records(data)]


def initial(model):
    from drift.models import load_model

    return params(load_model(model))


def one_step_by_hand(tmp_path, data, model, keep, denominator):
    """One SGD step of the first planned batch, on the examples ``keep`` picks, over ``denominator``."""
    from drift.examples import plan_batches
    from drift.models import load_model, load_tokenizer
    from drift.trainer import Trainer

    cfg = resolve(
        TrainConfig,
        model=model,
        dtype="float32",
        optimizer="sgd",
        lr=1e-1,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        max_grad_norm=0.0,
        **SGD,
    )
    exs = examples_of(data, model)
    (batch,) = plan_batches(len(exs), cfg.batch_size, seed=cfg.seed, epoch=0)
    trainer = Trainer(cfg, dtype="float32", out=tmp_path / "hand", pad_token_id=load_tokenizer(model).pad_token_id)
    trainer.prepare(load_model(model), 1, cfg.batch_size)
    trainer.step([exs[i] for i in batch if keep(exs[i])], denominator)
    return params(trainer.unwrapped())


@pytest.mark.parametrize("reduction", ["mean", "weighted"])
def test_skipping_keeps_the_other_terms_exactly_over_the_same_denominator(tmp_path, tiny_model, reduction):
    data = weighted_file(tmp_path / "w.jsonl", WEIGHTS)
    skipped = params(train(tmp_path, "skip", data, tiny_model, reduction=reduction, **SGD))  # the default: on
    full = params(train(tmp_path, "full", data, tiny_model, reduction=reduction, skip_weight_share=None, **SGD))
    D = len(WEIGHTS) if reduction == "mean" else sum(WEIGHTS)  # the whole batch's, skipped examples included
    by_hand = one_step_by_hand(tmp_path, data, tiny_model, lambda e: e.weight > 1e-6, D)
    before = initial(tiny_model)
    assert all(not torch.equal(skipped[k], before[k]) for k in skipped), "a parameter did not move"
    for k in skipped:
        # the same kept terms, the same D, the same micro-batches: the same arithmetic, bit for bit
        assert torch.equal(skipped[k], by_hand[k]), k
        # forwarding them too adds 2e-12 of the weight (and other padding widths): float noise
        assert torch.allclose(skipped[k], full[k], rtol=0, atol=1e-6), k


def test_summary_counts_skipped_examples_their_weight_share_and_only_forwarded_tokens(tmp_path, tiny_model):
    data = weighted_file(tmp_path / "w.jsonl", WEIGHTS)
    train(tmp_path, "skip", data, tiny_model, **SGD)
    train(tmp_path, "full", data, tiny_model, skip_weight_share=None, **SGD)
    on = json.loads((tmp_path / "skip" / "train_summary.json").read_text())
    off = json.loads((tmp_path / "full" / "train_summary.json").read_text())
    assert on["skipped_examples"] == 4 and off["skipped_examples"] == 0 and off["skipped_weight_share"] == 0.0
    assert on["skipped_weight_share"] == pytest.approx(2e-12 / sum(WEIGHTS), rel=1e-9)
    exs = examples_of(data, tiny_model)
    kept = [e for e in exs if e.weight > 1e-6]
    assert on["trained_tokens"] == sum(e.n_completion for e in kept) < off["trained_tokens"]
    assert off["trained_tokens"] == sum(e.n_completion for e in exs)
    assert on["tokens"] == sum(len(e.input_ids) for e in kept) < off["tokens"] == sum(len(e.input_ids) for e in exs)
    (entry,) = [json.loads(line) for line in (tmp_path / "skip" / "train_log.jsonl").read_text().splitlines()]
    assert entry["skipped"] == 4


def test_a_step_with_every_weight_zero_still_steps_optimizer_and_schedule(tmp_path, tiny_model):
    # AdamW with weight decay moves every parameter on a zero gradient; the schedule decays per step
    data = weighted_file(tmp_path / "zero.jsonl", [0.0] * 4)
    over = dict(batch_size=2, micro_batch_size=2, max_steps=2, optimizer="adamw", weight_decay=0.1)
    on = params(train(tmp_path, "on", data, tiny_model, lr_scheduler="linear", **over))
    off = params(train(tmp_path, "off", data, tiny_model, lr_scheduler="linear", skip_weight_share=None, **over))
    before = initial(tiny_model)
    for k in on:
        assert torch.equal(on[k], off[k]) and not torch.equal(on[k], before[k]), k
    log = [json.loads(line) for line in (tmp_path / "on" / "train_log.jsonl").read_text().splitlines()]
    assert [e["lr"] for e in log] == pytest.approx([0.1, 0.05]) and [e["skipped"] for e in log] == [2, 2]
    summary = json.loads((tmp_path / "on" / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["trained_tokens"] == 0 and summary["skipped_weight_share"] == 0.0


@pytest.mark.parametrize("share", [-0.1, 1.0])
def test_skip_weight_share_outside_0_1_is_an_error(tmp_path, tiny_model, share):
    from drift import DriftError

    data = weighted_file(tmp_path / "w.jsonl", [1.0])
    with pytest.raises(DriftError, match=r"skip_weight_share must be (below|at least)"):
        train(tmp_path, "x", data, tiny_model, skip_weight_share=share)
