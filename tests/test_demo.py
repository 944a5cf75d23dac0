"""`drift demo --quick`: the whole pipeline (warm-up, eval, rollout, weight, train, eval, compare) on a tiny model."""

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")


def test_demo_quick_runs_every_stage_and_reuses_them(tmp_path, tiny_model, monkeypatch, capsys):
    from drift import demo
    from drift.cli import main

    # the tiny model of the test session instead of the cached one
    monkeypatch.setitem(demo.PRESETS, "quick", {**demo.PRESETS["quick"], "model": tiny_model})
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for stage in ("0/5", "1/5", "2/5", "3/5", "4/5", "5/5", "before / after", "multi@5"):
        assert stage in printed
    for path in (
        "base/report.json",
        "rollouts.jsonl",
        "weighted.jsonl",
        "drift/model/config.json",
        "drift-eval/report.json",
        "cumulative_accuracy.png",
        "multi_at_k.png",
        "weighted.weights.png",
        "report.html",
    ):
        assert (out / path).exists(), path
    summary = json.loads((out / "demo_summary.json").read_text())
    base = json.loads((out / "base" / "report.json").read_text())
    after = json.loads((out / "drift-eval" / "report.json").read_text())
    assert summary["gain_multi_at_max_turns"] == pytest.approx(
        after["cumulative_accuracy"]["5"] - base["cumulative_accuracy"]["5"]
    )
    # generation decodes full batches: a rollout chunk's K trajectories fill one, evaluation chunks are even
    import yaml

    rollouts = yaml.safe_load((out / "rollouts.config.yaml").read_text())
    rows = demo.PRESETS["quick"]["generation_rows"]
    assert rollouts["chunk_prompts"] * rollouts["n"] == rollouts["batch_size"] == rows
    evaluation = yaml.safe_load((out / "base" / "records.config.yaml").read_text())
    assert evaluation["chunk_prompts"] == evaluation["num_prompts"] <= evaluation["batch_size"]
    # a second run reuses every finished stage
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("already done, reusing it") == 6
    # ... but not for other options: they once printed the first run's table
    assert main(["demo", "--quick", "--out", str(out), "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "options differ from the first run (seed: 0 -> 3)" in err and "--fresh" in err
    # the weights stage is done when its last file is written: a stage killed after the data
    # (before the plot and summary) is redone, not reused without them
    (out / "weighted.summary.json").unlink()
    (out / "weighted.weights.png").unlink()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("already done, reusing it") == 5
    assert (out / "weighted.weights.png").exists() and (out / "weighted.summary.json").exists()


def test_a_folder_with_stage_outputs_but_no_demo_config_is_refused(tmp_path, capsys):
    """Without demo.config.yaml nothing says which options made what is there (an interrupted
    --fresh could leave that): it is not reused under other options."""
    from drift.cli import main

    out = tmp_path / "demo"
    (out / "drift" / "model").mkdir(parents=True)
    (out / "drift" / "model" / "config.json").write_text("{}")
    assert main(["demo", "--quick", "--out", str(out), "--beta", "0.5"]) == 2
    assert f"{out} holds a demo's files but no demo.config.yaml" in capsys.readouterr().err


def test_fresh_deletes_the_folder_as_a_whole(tmp_path, monkeypatch, capsys):
    """--fresh moves the folder aside before deleting it: a kill mid-delete leaves no half folder
    under --out (it once left stage outputs without their demo.config.yaml, reused under new options)."""
    import shutil

    from drift import config as C
    from drift.cli import main
    from drift.options import save_config

    out = tmp_path / "demo"
    out.mkdir()
    save_config(C.DemoConfig(quick=True, out=str(out)), out / "demo.config.yaml")
    (out / "base").mkdir()
    (out / "base" / "report.json").write_text("{}")
    seen = []

    def interrupted(path, *a, **k):
        seen.append(Path(path))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", interrupted)
    assert main(["demo", "--quick", "--fresh", "--out", str(out)]) == 130
    assert seen and seen[0] != out and not out.exists()  # what was deleted had been moved away first


def test_format_warmup_trains_the_rewritten_text_not_the_sampled_ids(tmp_path, tiny_model):
    from drift.demo import build_format_warmup
    from drift.examples import build_examples
    from drift.models import load_tokenizer
    from drift.records import read_records, write_records
    from factories import make_record

    rec = make_record("p", 0, [None])  # the model said "I think 5", cut by max_new_tokens
    rec.update(finish_reasons=["length"], token_ids=[[40, 41, 42]])
    write_records(tmp_path / "own.jsonl", [rec])
    assert build_format_warmup(tmp_path / "own.jsonl", tmp_path / "format.jsonl") == 1
    (warm,) = read_records(tmp_path / "format.jsonl")
    tok = load_tokenizer(tiny_model)
    (ex,) = build_examples(warm, tok)
    assert tok.decode(ex.input_ids[ex.n_prompt :]) == "<answer>5</answer><|im_end|>"


def test_a_warm_up_killed_while_training_is_trained_on_the_rerun(tmp_path, monkeypatch):
    """format.jsonl is written before the warm-up trains: a kill in training once left it there,
    and the rerun took the stage as done and went on from the base model."""
    import drift.evaluate
    import drift.train
    from drift import demo

    calls = []

    def train(cfg):
        calls.append(cfg.out)
        if len(calls) == 1:
            raise KeyboardInterrupt
        (Path(cfg.out) / "model").mkdir(parents=True)
        (Path(cfg.out) / "model" / "config.json").write_text("{}")

    def rewrite(src, dst, records='{"a": 1}\n'):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        Path(dst).write_text(records)
        return len(records.splitlines())

    monkeypatch.setattr(drift.evaluate, "run_eval", lambda cfg: None)
    monkeypatch.setattr(drift.train, "run_train", train)
    monkeypatch.setattr(demo, "build_format_warmup", rewrite)
    shared = dict(model="base", task="arithmetic", task_options={}, max_turns=1, answer_mode="lenient",
                  max_new_tokens=8, seed=0, dtype="float32")  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        demo.format_warmup(tmp_path, shared, demo.PRESETS["quick"], 0, {})
    assert demo.format_warmup(tmp_path, shared, demo.PRESETS["quick"], 0, {}) == str(tmp_path / "warmup/train/model")
    assert len(calls) == 2
    # a warm-up with nothing to rewrite is done (and the base model goes on)
    monkeypatch.setattr(demo, "build_format_warmup", lambda src, dst: rewrite(src, dst, records=""))
    assert demo.format_warmup(tmp_path / "none", shared, demo.PRESETS["quick"], 0, {}) == "base"
    assert demo.format_warmup(tmp_path / "none", shared, demo.PRESETS["quick"], 0, {}) == "base" and len(calls) == 2
