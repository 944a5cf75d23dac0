"""drift eval end to end: scoring existing records, the scripted policy, the tiny real model, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drift.cli import main
from drift.records import read_records
from factories import REFERENCE_SAMPLE as REFERENCE

REPORT_KEYS = {
    "n",
    "max_turns",
    "per_turn_accuracy",
    "cumulative_accuracy",
    "cumulative_accuracy_ci",
    "correction_rate",
    "unique_answer_ratio",
    "format_error_rate",
    "mean_turns_to_solve",
    "model",
    "task",
    "dataset_fingerprint",
    "config",
    "wall_seconds",
}


def load_report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def comparable(report: dict) -> dict:
    """A report without what legitimately changes between two runs (timings, the output folder)."""
    drop = {"wall_seconds", "config", "generation"}
    return {k: v for k, v in report.items() if k not in drop}


def test_eval_of_reference_records_counts_t_star(tmp_path):
    raw = [json.loads(line) for line in REFERENCE.read_text().splitlines() if line.strip()]
    assert main(["eval", "--records", str(REFERENCE), "-o", str(tmp_path / "ev")]) == 0
    report = load_report(tmp_path / "ev")
    assert REPORT_KEYS <= set(report)
    turns = max(len(r["verifier"]) for r in raw)
    assert report["n"] == len(raw) and report["max_turns"] == turns
    # multi@t = share of trajectories whose first correct turn t_star is <= t, counted by hand
    expected = {
        str(t): sum(r["t_star"] is not None and r["t_star"] <= t for r in raw) / len(raw) for t in range(1, turns + 1)
    }
    assert report["cumulative_accuracy"] == pytest.approx(expected)
    for t, (lo, hi) in report["cumulative_accuracy_ci"].items():
        assert lo <= expected[t] <= hi
    assert report["model"] is None and report["prompts"] == len({r["prompt_id"] for r in raw})
    assert not (tmp_path / "ev" / "records.jsonl").exists()  # nothing was generated


def test_a_report_of_existing_records_states_how_they_were_sampled(tmp_path):
    """With --records the report's config says what the records say (their sampling, model, K),
    not eval's own defaults (greedy): compare must see that a sampled rollout is not a greedy eval."""
    assert main(["rollout", *SCRIPTED_ROLLOUT, "--top-p", "0.9", "-o", str(tmp_path / "r.jsonl")]) == 0
    assert main(["eval", "--records", str(tmp_path / "r.jsonl"), "-o", str(tmp_path / "ev")]) == 0
    config = load_report(tmp_path / "ev")["config"]
    assert config["temperature"] == 1.0 and config["top_p"] == 0.9 and config["max_new_tokens"] == 256
    assert config["n"] == 3 and config["model"] == "smollm2-135m" and config["max_turns"] == 3
    assert config["protocol"] is None and config["answer_mode"] is None  # the records do not say
    assert config["records"] == str(tmp_path / "r.jsonl")


SCRIPTED_ROLLOUT = ["--backend", "scripted", "--num-prompts", "4", "--n", "3", "--max-turns", "3"]


def test_records_of_different_turn_budgets_are_not_scored_together(tmp_path, capsys):
    """Episodes allowed 3 turns would count as unsolved at turns 4 and 5 next to 5-turn ones."""
    for turns in (3, 5):
        flags = [*SCRIPTED_ROLLOUT[:-1], str(turns), "-o", str(tmp_path / f"r{turns}.jsonl")]
        assert main(["rollout", *flags]) == 0
    both = tmp_path / "both.jsonl"
    five = [{**rec, "prompt_id": "five-" + rec["prompt_id"]} for rec in read_records(tmp_path / "r5.jsonl")]
    both.write_text((tmp_path / "r3.jsonl").read_text() + "".join(json.dumps(rec) + "\n" for rec in five))
    capsys.readouterr()
    assert main(["eval", "--records", str(both), "-o", str(tmp_path / "ev")]) == 2
    assert "turn budgets" in (err := capsys.readouterr().err) and "--max-turns" in err
    assert not (tmp_path / "ev" / "report.json").exists()
    # --max-turns 3 scores every episode's first 3 turns: both files, as a 3-turn budget leaves them
    assert main(["eval", "--records", str(both), "--max-turns", "3", "-o", str(tmp_path / "ev")]) == 0
    report = load_report(tmp_path / "ev")
    assert report["max_turns"] == report["config"]["max_turns"] == 3 and list(report["cumulative_accuracy"]) == [
        "1",
        "2",
        "3",
    ]
    records = read_records(both)
    solved = sum(rec["first_correct_turn"] is not None and rec["first_correct_turn"] <= 3 for rec in records)
    assert report["n"] == len(records) and report["cumulative_accuracy"]["3"] == pytest.approx(solved / len(records))
    # more turns than an episode had would count it unsolved at turns it never took
    assert main(["eval", "--records", str(tmp_path / "r3.jsonl"), "--max-turns", "5", "-o", str(tmp_path / "e5")]) == 2
    assert "budget of 3" in capsys.readouterr().err


def eval_args(out: Path, *flags: str) -> list[str]:
    return [
        "eval",
        "--task",
        "arithmetic",
        "--num-prompts",
        "6",
        "--max-turns",
        "3",
        "--chunk-prompts",
        "4",
        "-o",
        str(out),
        *flags,
    ]


def test_eval_with_the_scripted_policy(tmp_path):
    out = tmp_path / "ev"
    assert main(eval_args(out, "--backend", "scripted")) == 0
    report = load_report(out)
    assert REPORT_KEYS <= set(report)
    records = read_records(out / "records.jsonl")
    assert len(records) == report["n"] == 6 and report["max_turns"] == 3
    assert {r["prompt_id"] for r in records} == {f"arith-{i:06d}" for i in range(6)}
    assert all(r["sampling"]["temperature"] == 0.0 for r in records)  # greedy by default
    solved_by = [
        sum(r["first_correct_turn"] is not None and r["first_correct_turn"] <= t for r in records) / 6
        for t in (1, 2, 3)
    ]
    assert list(report["cumulative_accuracy"].values()) == pytest.approx(solved_by)
    assert report["task"] == "arithmetic" and report["model"] == report["config"]["model"]
    assert report["config"]["split"] == "test" and report["generation"]["new_trajectories"] == 6
    # the held-out split: no eval prompt is a training prompt of a rollout with the same seed
    assert (
        main(
            ["rollout", "--backend", "scripted", "--num-prompts", "50", "--n", "1", "-o", str(tmp_path / "train.jsonl")]
        )
        == 0
    )
    train_questions = {r["question"] for r in read_records(tmp_path / "train.jsonl")}
    assert not train_questions & {r["question"] for r in records}


def test_finished_eval_resumes_to_the_same_report_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(eval_args(out, "--backend", "scripted")) == 0
    records, report = (out / "records.jsonl").read_bytes(), load_report(out)
    capsys.readouterr()
    assert main(eval_args(out, "--backend", "scripted")) == 2
    assert "exists; pass --resume" in capsys.readouterr().err
    assert main(eval_args(out, "--backend", "scripted", "--resume")) == 0
    assert (out / "records.jsonl").read_bytes() == records
    resumed = load_report(out)
    assert comparable(resumed) == comparable(report) and resumed["generation"]["new_trajectories"] == 0


def test_interrupted_eval_resumes_to_the_same_records(tmp_path):
    out = tmp_path / "ev"
    assert main(eval_args(out, "--backend", "scripted")) == 0
    records, report = (out / "records.jsonl").read_bytes(), load_report(out)
    fourth_line_end = [i for i, b in enumerate(records) if b == ord("\n")][3]
    cut = fourth_line_end + 8  # the first chunk (4 prompts) is complete, the crash hit line 5
    (out / "records.jsonl").write_bytes(records[:cut])
    assert main(eval_args(out, "--backend", "scripted", "--resume")) == 0
    assert (out / "records.jsonl").read_bytes() == records
    resumed = load_report(out)
    assert comparable(resumed) == comparable(report) and resumed["generation"]["new_trajectories"] == 2


def test_eval_with_the_tiny_model_is_deterministic(tmp_path, tiny_model):
    flags = ["--backend", "hf", "--model", tiny_model, "--max-new-tokens", "4", "--dtype", "float32"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(eval_args(a, *flags)) == 0
    report = load_report(a)
    assert REPORT_KEYS <= set(report)
    assert report["n"] == 6 and report["model"] == tiny_model and report["generation"]["tokens_generated"] > 0
    records = read_records(a / "records.jsonl")
    assert all(len(r["correct"]) == len([m for m in r["messages"] if m["role"] == "assistant"]) for r in records)
    assert main(eval_args(b, *flags)) == 0  # greedy: the same replies again
    assert (a / "records.jsonl").read_bytes() == (b / "records.jsonl").read_bytes()
    assert comparable(load_report(b)) == comparable(report)


def test_greedy_evaluation_of_several_episodes_per_prompt_is_refused(tmp_path, capsys):
    """At temperature 0 every episode of a prompt is the same one: --n 3 tripled n and narrowed every
    interval by sqrt(3) for nothing."""
    assert main(eval_args(tmp_path / "ev", "--backend", "scripted", "--n", "3")) == 2
    assert "--n 3 at temperature 0" in capsys.readouterr().err and not (tmp_path / "ev").exists()
    assert main(eval_args(tmp_path / "ev", "--backend", "scripted", "--n", "3", "--temperature", "1")) == 0
    assert load_report(tmp_path / "ev")["n"] == 18
