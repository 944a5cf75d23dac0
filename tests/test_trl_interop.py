"""drift and TRL train the same objective: `drift export-trl` output through TRL's own SFTTrainer.

With every weight 1, drift's loss (build_examples -> collate -> weighted_nll_terms) must equal TRL's
completion-only loss (SFTTrainer's dataset preparation -> its DataCollatorForLanguageModeling ->
its compute_loss, fused LM head included) on the same examples, to 1e-5 in fp32.

The two reductions differ on purpose: TRL divides the batch's summed token NLL by the number of
completion tokens in the batch, drift takes each example's token-mean and then averages
(sum of weighted_nll_terms / batch size). They agree per example (batch of 1) and on a
batch whose completions have the same number of tokens, and only there, so that is what is compared.

Tokenization: TRL renders ``prompt + completion`` with the chat template and trains everything
after the rendered prompt, i.e. whatever the template writes after the reply; drift trains the
reply's tokens + EOS. For ChatML (``content<|im_end|>\\n``) TRL therefore trains one more token,
the "\\n" after ``<|im_end|>``. The equality tests use a ChatML template without that newline, so
both sides train exactly the same tokens; a separate test pins the difference on the real template.
"""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("datasets")
torch.set_num_threads(1)

from drift import DriftError  # noqa: E402
from drift.config import ExportTRLConfig  # noqa: E402
from drift.examples import build_examples, collate  # noqa: E402
from drift.losses import weighted_nll_terms  # noqa: E402
from drift.records import write_records  # noqa: E402
from drift.tiny import CHAT_TEMPLATE, build_tiny_model  # noqa: E402
from drift.trl_export import run_export_trl  # noqa: E402

# The tiny model's ChatML template minus the "\n" after <|im_end|>: the rendered prompt+completion
# then ends at EOS, exactly where drift's completion ends (see the module docstring).
NO_NEWLINE_TEMPLATE = CHAT_TEMPLATE.replace("'<|im_end|>' + '\\n'", "'<|im_end|>'")
assert NO_NEWLINE_TEMPLATE != CHAT_TEMPLATE
TOL = 1e-5


def record(pid, replies, weight=1.0, traj_id=0):
    """A valid schema-1 record: a correction episode with the given assistant replies."""
    messages = [
        {"role": "system", "content": "You're a helpful assistant."},
        {"role": "user", "content": "What is 7+11? Only give the final answer between <answer> and </answer>."},
    ]
    for t, reply in enumerate(replies):
        if t:
            messages.append({"role": "user", "content": "Incorrect. Please think again."})
        messages.append({"role": "assistant", "content": reply})
    n = len(replies)
    correct = [t == n - 1 for t in range(n)]
    return {
        "schema": 1,
        "prompt_id": pid,
        "traj_id": traj_id,
        "messages": messages,
        "answers": ["x"] * n,
        "correct": correct,
        "rewards": [float(c) for c in correct],
        "format_errors": 0,
        "first_correct_turn": n,
        "weight": weight,
    }


RECORDS = [
    record("a", ["<answer>18</answer>"]),
    record("b", ["<answer>17</answer>", "What is 7+11? <answer>18</answer>"]),
    record("c", ["I think <answer>77</answer>", "<answer>4</answer>", "What is 7*11? It is <answer>18</answer>"]),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def tokenizer_with(path, template):
    from drift.models import load_tokenizer

    tok = load_tokenizer(str(path))
    tok.chat_template = template
    return tok


def load_model(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # A fresh random model predicts ~uniformly (every token's NLL ~ log V), which would hide an
    # off-by-one in the trained positions; sharpening the final norm makes per-token NLLs differ.
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    return model.eval()


def export(tmp_path, records, target="last"):
    src, out = tmp_path / "weighted.jsonl", tmp_path / "trl.jsonl"
    write_records(src, records)
    run_export_trl(ExportTRLConfig(input=str(src), out=str(out), target=target))
    return out


def trl_trainer(tmp_path, model_path, tokenizer, data_file):
    """A real SFTTrainer on the exported file: it tokenizes, builds labels and patches the model itself."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path / "trl-run"),
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        per_device_train_batch_size=1,
        max_length=None,
        dataset_num_proc=None,
        seed=0,
    )
    dataset = load_dataset("json", data_files=str(data_file), split="train")
    trainer = SFTTrainer(model=load_model(model_path), args=args, train_dataset=dataset, processing_class=tokenizer)
    assert trainer.completion_only_loss  # prompt/completion data: TRL's default
    return trainer


def trl_loss(trainer, rows):
    """TRL's loss on a batch of prepared rows: its collator, then its compute_loss (no autocast, fp32)."""
    batch = trainer.data_collator([{k: row[k] for k in ("input_ids", "labels")} for row in rows])
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item(), batch


def drift_loss(model, examples, pad_id):
    with torch.no_grad():
        terms, _ = weighted_nll_terms(model, collate(examples, pad_id))
    return terms.sum().item() / len(examples)


def drift_examples(records, tokenizer, target="last"):
    return [e for i, r in enumerate(records) for e in build_examples(r, tokenizer, index=i, target=target)]


@pytest.mark.parametrize("target", ["last", "all"])
def test_drift_loss_equals_trl_completion_only_loss_per_example(tmp_path, tiny, target):
    tok = tokenizer_with(tiny, NO_NEWLINE_TEMPLATE)
    trainer = trl_trainer(tmp_path, tiny, tok, export(tmp_path, RECORDS, target))
    rows = list(trainer.train_dataset)
    examples = drift_examples(RECORDS, tok, target)
    assert len(rows) == len(examples) == (3 if target == "last" else 6)
    model = load_model(tiny)
    for row, ex in zip(rows, examples):
        # same tokens, same trained positions (TRL's labels are unshifted: -100 on the prompt)
        assert row["input_ids"] == ex.input_ids
        assert row["labels"] == [-100] * ex.n_prompt + ex.input_ids[ex.n_prompt :]
        ours, (theirs, _) = drift_loss(model, [ex], tok.pad_token_id), trl_loss(trainer, [row])
        assert theirs > 1.0  # a random model: a real, non-trivial NLL
        assert abs(ours - theirs) < TOL, (ex.index, ours, theirs)


def test_equal_length_batch_matches_and_unequal_batch_does_not(tmp_path, tiny):
    """A padded batch: equal completion lengths agree; unequal ones show the two reductions differ."""
    tok = tokenizer_with(tiny, NO_NEWLINE_TEMPLATE)
    same = [record("a", ["<answer>18</answer>"]), record("b", ["<answer>17</answer>", "<answer>18</answer>"])]
    trainer = trl_trainer(tmp_path, tiny, tok, export(tmp_path, same + RECORDS[2:]))
    rows = list(trainer.train_dataset)
    examples = drift_examples(same + RECORDS[2:], tok)
    assert examples[0].n_completion == examples[1].n_completion
    assert len(examples[0].input_ids) != len(examples[1].input_ids)  # so padding is exercised
    model = load_model(tiny)
    ours, (theirs, batch) = drift_loss(model, examples[:2], tok.pad_token_id), trl_loss(trainer, rows[:2])
    assert (batch["labels"] != -100).sum(-1).tolist() == [examples[0].n_completion] * 2
    assert abs(ours - theirs) < TOL, (ours, theirs)
    assert examples[2].n_completion != examples[0].n_completion
    ours = drift_loss(model, [examples[0], examples[2]], tok.pad_token_id)
    theirs, _ = trl_loss(trainer, [rows[0], rows[2]])
    assert abs(ours - theirs) > 1e-3  # per-example mean vs. token mean: different objectives


def test_chatml_newline_is_trained_by_trl_not_by_drift(tmp_path, tiny):
    """On the model's own ChatML template TRL trains one token more per example: the "\\n" after EOS."""
    tok = tokenizer_with(tiny, CHAT_TEMPLATE)
    trainer = trl_trainer(tmp_path, tiny, tok, export(tmp_path, RECORDS))
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    model = load_model(tiny)
    for row, ex in zip(trainer.train_dataset, drift_examples(RECORDS, tok)):
        assert ex.input_ids[-1] == tok.eos_token_id
        assert row["input_ids"] == ex.input_ids + newline
        assert row["labels"] == [-100] * ex.n_prompt + ex.input_ids[ex.n_prompt :] + newline
        ours, (theirs, _) = drift_loss(model, [ex], tok.pad_token_id), trl_loss(trainer, [row])
        assert abs(ours - theirs) > 1e-4, (ours, theirs)  # the comparison above is sensitive to one token


def test_export_trl_rows(tmp_path):
    recs = RECORDS[:1] + [{**RECORDS[2], "weight": 2.5, "traj_id": 4}]
    out = export(tmp_path, recs, target="all")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt_id"], r["traj_id"], r["turn"], r["weight"]) for r in rows] == [
        ("a", 0, 1, 1.0),
        ("c", 4, 1, 2.5),
        ("c", 4, 2, 2.5),
        ("c", 4, 3, 2.5),
    ]
    msgs = RECORDS[2]["messages"]
    last = rows[-1]
    assert set(last) == {"prompt", "completion", "weight", "prompt_id", "traj_id", "turn", "finish_reason"}
    # a reply cut by the length limit says so: TRL would train an end-of-turn token after it
    cut = {**RECORDS[0], "finish_reasons": ["length"] * len(RECORDS[0]["rewards"])}
    (row,) = [json.loads(line) for line in export(tmp_path / "cut", [cut]).read_text().splitlines()]
    assert row["finish_reason"] == "length"
    assert last["prompt"] == msgs[:-1] and last["completion"] == [msgs[-1]]
    assert rows[1]["prompt"] == msgs[:2]
    assert rows[1]["completion"] == [{"role": "assistant", "content": msgs[2]["content"]}]
    assert json.loads((tmp_path / "trl.summary.json").read_text())["rows"] == 4
    out = export(tmp_path, recs)  # target last: one row per record, the final turn
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt_id"], r["turn"]) for r in rows] == [("a", 1), ("c", 3)]


def test_export_trl_needs_weights(tmp_path):
    unweighted = {k: v for k, v in RECORDS[1].items() if k != "weight"}
    src = tmp_path / "t.jsonl"
    write_records(src, [RECORDS[0], unweighted])
    (tmp_path / "trl.jsonl").write_text("keep\n")
    with pytest.raises(DriftError, match=r"t\.jsonl:2: .*no field 'weight'; run drift weight first"):
        run_export_trl(ExportTRLConfig(input=str(src), out=str(tmp_path / "trl.jsonl")))
    assert (tmp_path / "trl.jsonl").read_text() == "keep\n"  # atomic: the old output is untouched
