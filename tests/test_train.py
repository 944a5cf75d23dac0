"""Weighted SFT on a tiny random model: masking, weights, accumulation, resume, bad input."""

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from drift import DriftError  # noqa: E402
from drift.cli import main  # noqa: E402
from drift.config import TrainConfig  # noqa: E402
from drift.examples import build_examples, collate  # noqa: E402
from drift.options import resolve  # noqa: E402
from drift.records import write_records  # noqa: E402
from factories import make_record  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def weighted_file(path, weights):
    recs = []
    for i, w in enumerate(weights):
        answers = [str(i % 7), str(i % 7 + 1), "5"][: 1 + i % 3]
        recs.append(
            make_record(f"p{i // 4}", i % 4, answers, first_correct=None, weight=w, question=f"What is {i}+{i % 5}?")
        )
    write_records(path, recs)
    return path


def train(tmp_path, name, data, model, **over):
    over.setdefault("optimizer", "sgd")  # exact comparisons: Adam's first step amplifies float noise
    over.setdefault("lr_scheduler", "constant")
    cfg = resolve(
        TrainConfig,
        input=str(data),
        out=str(tmp_path / name),
        model=model,
        dtype="float32",
        lr=1e-1,
        warmup_ratio=0.0,
        max_grad_norm=0.0,
        **over,
    )
    from drift.train import run_train

    run_train(cfg)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tmp_path / name / "model")


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_labels_cover_the_completion_and_eos_only(tiny_model):
    from drift.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    rec = make_record("p", 0, ["4", "5"], first_correct=2, weight=1.0)
    (ex,) = build_examples(rec, tok)
    completion = ex.input_ids[ex.n_prompt :]
    assert completion[-1] == tok.eos_token_id
    assert tok.decode(completion[:-1]) == "<answer>5</answer>"
    # the prompt is the whole history rendered with a generation prompt
    assert tok.decode(ex.input_ids[: ex.n_prompt]).endswith(
        "Incorrect. Please think again.<|im_end|>\n<|im_start|>assistant\n"
    )
    _ids, mask, pos, labels, weights, k, _old, _packed = collate(
        [ex, build_examples(make_record("q", 0, ["9"], weight=2.0), tok)[0]], tok.pad_token_id
    )
    assert k == len(completion)
    assert labels[0].tolist() == completion  # the longest completion fills the window
    trained = labels[1][labels[1] != -100].tolist()
    assert trained[-1] == tok.eos_token_id and tok.decode(trained[:-1]) == "<answer>9</answer>"
    assert weights.tolist() == [1.0, 2.0]
    # left padding, positions restart at 0 after the pad
    assert mask[1, 0] == 0 and pos[1, mask[1].argmax()] == 0


def test_target_all_trains_every_turn_and_history_is_cut_from_the_left(tiny_model):
    from drift.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    rec = make_record("p", 0, ["1", "2", "3"], weight=0.5)
    exs = build_examples(rec, tok, target="all")
    assert [tok.decode(e.input_ids[e.n_prompt : -1]) for e in exs] == [f"<answer>{a}</answer>" for a in "123"]
    (short,) = build_examples(rec, tok, max_length=24)
    assert len(short.input_ids) == 24 and tok.decode(short.input_ids[short.n_prompt : -1]) == "<answer>3</answer>"


def test_padded_batch_loss_equals_unpadded_per_example(tiny_model):
    from drift.losses import weighted_nll_terms
    from drift.models import load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    exs = [build_examples(make_record("p", i, ["1"] * (i + 1), weight=1.0), tok)[0] for i in range(3)]
    nll, _ = weighted_nll_terms(model, collate(exs, tok.pad_token_id))  # weights 1: the terms are the NLLs
    for e, got in zip(exs, nll):
        ids = torch.tensor([e.input_ids])
        labels = ids.clone()
        labels[:, : e.n_prompt] = -100
        assert got.item() == pytest.approx(model(input_ids=ids, labels=labels).loss.item(), abs=1e-5)


def test_weight_zero_gives_zero_gradient(tiny_model):
    from drift.losses import weighted_nll_terms
    from drift.models import load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    exs = [build_examples(make_record("p", i, [str(i)], weight=0.0), tok)[0] for i in range(2)]
    terms, _ = weighted_nll_terms(model, collate(exs, tok.pad_token_id))
    terms.sum().backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_every_parameter_changes_and_weights_one_equal_plain_sft(tmp_path, tiny_model):
    from drift.models import load_model

    before = params(load_model(tiny_model))
    data = weighted_file(tmp_path / "w1.jsonl", [1.0] * 8)
    after = params(train(tmp_path, "a", data, tiny_model, batch_size=8, micro_batch_size=8, max_steps=1))
    assert all(not torch.equal(before[k], after[k]) for k in before), "a parameter did not move"
    # plain SFT by hand: mean over examples of token-mean NLL, one AdamW step with the same settings
    from drift.models import load_tokenizer
    from drift.records import read_records

    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-1)
    losses = []
    for rec in read_records(data):
        (e,) = build_examples(rec, tok)
        ids = torch.tensor([e.input_ids])
        labels = ids.clone()
        labels[:, : e.n_prompt] = -100
        losses.append(model(input_ids=ids, labels=labels).loss)
    torch.stack(losses).mean().backward()
    opt.step()
    for k, v in model.state_dict().items():
        assert torch.allclose(v, after[k], atol=1e-5), k


def test_gradient_accumulation_1x8_equals_8x1(tmp_path, tiny_model):
    data = weighted_file(tmp_path / "w.jsonl", [0.5, 2.0, 1.0, 0.0, 3.0, 1.5, 0.25, 1.0])
    for reduction in ("mean", "weighted"):
        one = params(
            train(
                tmp_path,
                f"one-{reduction}",
                data,
                tiny_model,
                batch_size=8,
                micro_batch_size=8,
                max_steps=1,
                reduction=reduction,
            )
        )
        eight = params(
            train(
                tmp_path,
                f"eight-{reduction}",
                data,
                tiny_model,
                batch_size=8,
                micro_batch_size=1,
                max_steps=1,
                reduction=reduction,
            )
        )
        for k in one:
            assert torch.allclose(one[k], eight[k], atol=1e-6), (reduction, k)


def test_resume_continues_bit_for_bit(tmp_path, tiny_model, capsys):
    data = weighted_file(tmp_path / "w.jsonl", [1.0, 0.5, 2.0, 1.0] * 4)
    options = dict(batch_size=4, micro_batch_size=2, max_steps=6, save_steps=3, save_total_limit=5, optimizer="adamw")
    full = params(train(tmp_path, "full", data, tiny_model, **options))
    # a run that died after its step-3 checkpoint: the same folder without what came later
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    shutil.rmtree(crashed / "model")
    assert [p.name for p in (crashed / "checkpoints").iterdir()] == ["step-0000003"]
    capsys.readouterr()
    resumed = params(train(tmp_path, "crashed", data, tiny_model, resume=True, **options))
    assert f"resumed from {crashed / 'checkpoints' / 'step-0000003'} at step 3" in capsys.readouterr().out
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    # and its summary counts the whole run's tokens, the 3 steps before the crash included
    a, b = (json.loads((tmp_path / name / "train_summary.json").read_text()) for name in ("full", "crashed"))
    assert b["tokens"] == a["tokens"] > 0 and b["trained_tokens"] == a["trained_tokens"] > 0


def test_lora_trains_only_adapters_and_merges(tmp_path, tiny_model):
    from drift.models import load_model

    before = params(load_model(tiny_model))
    data = weighted_file(tmp_path / "w.jsonl", [1.0] * 4)
    after = params(
        train(
            tmp_path,
            "lora",
            data,
            tiny_model,
            batch_size=4,
            micro_batch_size=4,
            max_steps=2,
            lora_r=4,
            optimizer="adamw",
        )
    )
    assert set(after) == set(before)  # merged: a plain model folder again
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda r: r.pop("weight"), "no field 'weight'"),
        (lambda r: r.update(weight=-1.0), "field 'weight' must be >= 0"),
        (lambda r: r.update(weight=float("nan")), "field 'weight' must be a finite number"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, tiny_model, capsys, edit, message):
    rec = make_record("p", 0, ["1"], weight=1.0)
    edit(rec)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--model", tiny_model]) == 2
    assert f"{path}:1: " in (err := capsys.readouterr().err) and message in err  # file, line, field
    assert not (out / "model").exists()


def test_model_without_chat_template_is_an_error(tmp_path, tiny_model):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    cfg_path = plain / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    data = weighted_file(tmp_path / "w.jsonl", [1.0])
    with pytest.raises(DriftError, match="no chat template"):
        train(tmp_path, "x", data, str(plain), batch_size=1, micro_batch_size=1)


def test_cli_train_runs(tmp_path, tiny_model, capsys):
    data = weighted_file(tmp_path / "w.jsonl", [1.0] * 4)
    out = tmp_path / "cli"
    assert (
        main(
            [
                "train",
                str(data),
                "--out",
                str(out),
                "--model",
                tiny_model,
                "--batch-size",
                "4",
                "--micro-batch-size",
                "2",
                "--max-steps",
                "2",
            ]
        )
        == 0
    )
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["examples"] == 4 and summary["trained_tokens"] > 0
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2
    assert (out / "model" / "config.json").exists() and (out / "config.yaml").exists()


def test_a_model_folder_is_there_whole_or_not_at_all(tmp_path, tiny_model, monkeypatch):
    """model/config.json is what the demo and the study take for a finished training: a save that
    fails half-way (here the tokenizer's) must not leave it behind."""
    from transformers import PreTrainedTokenizerBase

    data = weighted_file(tmp_path / "w.jsonl", [1.0, 1.0])
    args = ["train", str(data), "--model", tiny_model, "--batch-size", "2", "--dtype", "float32"]

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        main([*args, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "model").exists()
    monkeypatch.undo()
    assert main([*args, "--out", str(tmp_path / "out"), "--resume"]) == 0
    assert (tmp_path / "out" / "model" / "config.json").exists()
    assert not list((tmp_path / "out").glob("model.*"))  # no partial folder left


def test_resume_refuses_other_options_and_says_when_there_is_no_checkpoint(tmp_path, tiny_model, capsys):
    """The checkpoint brings back the first run's optimizer and schedule (its lr), and its data
    order: other options (another lr, another file) would silently mix two runs."""
    data = weighted_file(tmp_path / "w.jsonl", [1.0] * 4)
    args = ["train", str(data), "--model", tiny_model, "--batch-size", "2", "--dtype", "float32", "--out"]
    assert main([*args, str(tmp_path / "a"), "--save-steps", "1"]) == 0
    assert main([*args, str(tmp_path / "a"), "--save-steps", "1", "--resume", "--lr", "2e-5"]) == 2
    assert "options differ from the first run (lr: 1e-05 -> 2e-05)" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "a"), "--save-steps", "1", "--resume"]) == 0  # the same options
    assert main([*args, str(tmp_path / "b")]) == 0  # no checkpoints kept (save_steps 0)
    capsys.readouterr()
    assert main([*args, str(tmp_path / "b"), "--resume"]) == 0
    assert "no checkpoint" in capsys.readouterr().out
    # starting over in a run's folder is a resume of that run too: with its options, not others
    before = (tmp_path / "b" / "model" / "model.safetensors").read_bytes()
    assert main([*args, str(tmp_path / "b"), "--resume", "--lr", "1e-3"]) == 2
    assert "options differ from the first run (lr: 1e-05 -> 0.001)" in capsys.readouterr().err
    assert (tmp_path / "b" / "model" / "model.safetensors").read_bytes() == before
