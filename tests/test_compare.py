"""drift compare on two tiny hand-written reports: table, plots, JSON, errors."""

from __future__ import annotations

import argparse
import json

import pytest

from drift import DriftError
from drift.compare import run_compare
from drift.config import CompareConfig
from drift.options import add_arguments, resolve

DRIFT_REPORT = {
    "n": 4,
    "max_turns": 2,
    "cumulative_accuracy": {"1": 0.25, "2": 0.75},
    "cumulative_accuracy_ci": {"1": [0.05, 0.7], "2": [0.3, 0.95]},
    "correction_rate": {"2": 2 / 3},
    "correction_rate_overall": 2 / 3,
    "unique_answer_ratio": 0.875,
    "format_error_rate": 0.125,
    "compute": {"train_seconds": 12.5, "generated_tokens": 3456},
}
SFT_REPORT = {
    "n": 2,
    "max_turns": 3,
    "cumulative_accuracy": {"1": 0.5, "2": 0.5, "3": 1.0},
    "correction_rate": {"2": 0.0, "3": 1.0},
    "correction_rate_overall": 1.0,
    "unique_answer_ratio": 1.0,
    "format_error_rate": 0.0,
}


@pytest.fixture
def runs(tmp_path):
    for name, report in (("drift", DRIFT_REPORT), ("sft", SFT_REPORT)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
    return tmp_path


def test_table_plots_and_json(runs, capsys):
    out = runs / "cmp"
    result = run_compare(CompareConfig(reports=[str(runs / "drift"), str(runs / "sft" / "report.json")], out=str(out)))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "method",
        "n",
        "multi@1",
        "multi@2",
        "multi@3",
        "corr@2",
        "corr",
        "all",
        "unique",
        "fmt",
        "err",
    ]
    # drift has no turn 3: '-'
    assert lines[2].split() == ["drift", "4", "0.2500", "0.7500", "-", "0.6667", "0.6667", "0.8750", "0.1250"]
    assert lines[3].split() == ["sft", "2", "0.5000", "0.5000", "1.0000", "0.0000", "1.0000", "1.0000", "0.0000"]
    # the compute table, only with what the reports carry
    assert lines[5].split() == ["method", "train_seconds", "generated_tokens"]
    assert lines[7].split() == ["drift", "12.5000", "3456"]
    assert lines[8].split() == ["sft", "-", "-"]
    for name in ("cumulative_accuracy.png", "multi_at_k.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    saved = json.loads((out / "comparison.json").read_text())
    assert saved == result
    assert [r["name"] for r in saved["runs"]] == ["drift", "sft"]
    assert saved["runs"][0]["multi@3"] is None and saved["runs"][1]["multi@3"] == 1.0
    assert saved["runs"][0]["compute"] == DRIFT_REPORT["compute"] and "compute" not in saved["runs"][1]


def test_names_and_no_output_folder(runs, capsys):
    result = run_compare(CompareConfig(reports=[str(runs / "drift"), str(runs / "sft")], names=["ours", "base"]))
    assert [r["name"] for r in result["runs"]] == ["ours", "base"]
    assert capsys.readouterr().out.splitlines()[2].startswith("ours")
    assert sorted(p.name for p in runs.iterdir()) == ["drift", "sft"]  # nothing written


def test_flags_parse_into_lists(runs):
    parser = argparse.ArgumentParser()
    add_arguments(parser, CompareConfig)
    cfg = resolve(CompareConfig, parser.parse_args([f"{runs}/drift", f"{runs}/sft", "--names", "a,b"]))
    assert cfg.reports == [f"{runs}/drift", f"{runs}/sft"] and cfg.names == ["a", "b"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such report file"),
        ("{not json", "not a readable JSON report"),
        ("[1, 2]", "must be a JSON object"),
        ('{"cumulative_accuracy": {"1": 0.5}}', "field 'n'"),
        ('{"n": 2}', "field 'cumulative_accuracy'"),
        ('{"n": 2, "cumulative_accuracy": {"t1": 0.5}}', "turn keys"),
        ('{"n": 2, "cumulative_accuracy": {"1": "half"}}', "cumulative_accuracy.1"),
        ('{"n": 2, "cumulative_accuracy": {"01": 0.5}}', "turn keys"),  # would show as multi@1 = -
        ('{"n": 2, "cumulative_accuracy": {"1": 0.5}, "config": null}', "field 'config'"),
        ('{"n": 2, "cumulative_accuracy": {"1": 0.5}, "cumulative_accuracy_ci": {"1": 0.5}}', "cumulative_accuracy_ci"),
        # an interval that leaves out its own value once crashed the plot (matplotlib: negative yerr)
        (
            '{"n": 2, "cumulative_accuracy": {"1": 0.5}, "cumulative_accuracy_ci": {"1": [0.7, 0.9]}}',
            "cumulative_accuracy_ci.1",
        ),
        # the viewer shows these: text there would become markup
        ('{"n": 2, "cumulative_accuracy": {"1": 0.5}, "unique_answer_ratio": "<img src=x>"}', "unique_answer_ratio"),
        ('{"n": 2, "cumulative_accuracy": {"1": 0.5}, "format_error_rate": [1]}', "format_error_rate"),
        ('{"n": 2, "cumulative_accuracy": {"1": 0.5}, "correction_rate_overall": "x"}', "correction_rate_overall"),
    ],
)
def test_bad_report_is_a_drift_error(runs, content, message):
    bad = runs / "bad"
    bad.mkdir()
    if content is not None:
        (bad / "report.json").write_text(content)
    with pytest.raises(DriftError, match=message):
        run_compare(CompareConfig(reports=[str(runs / "drift"), str(bad)]))


def test_bad_options_are_drift_errors(runs, tmp_path):
    with pytest.raises(DriftError, match="no reports"):
        run_compare(CompareConfig())
    with pytest.raises(DriftError, match="2 reports"):
        run_compare(CompareConfig(reports=[str(runs / "drift"), str(runs / "sft")], names=["one"]))
    other = tmp_path / "elsewhere" / "drift"
    other.mkdir(parents=True)
    (other / "report.json").write_text(json.dumps(SFT_REPORT))
    with pytest.raises(DriftError, match="named 'drift'"):
        run_compare(CompareConfig(reports=[str(runs / "drift"), str(other)]))


def test_reports_of_different_problems_or_settings_are_flagged(tmp_path, capsys):
    """Evaluated with another seed (other arithmetic problems) or another number of turns, two
    reports are not on the same footing: compare says so, on screen and in comparison.json."""
    for name, fingerprint, temperature in (("a", "f00d", 0.0), ("b", "beef", 0.0), ("c", "f00d", 1.0)):
        report = {**DRIFT_REPORT, "dataset_fingerprint": fingerprint, "config": {"temperature": temperature}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
    result = run_compare(resolve(CompareConfig, reports=[str(tmp_path / n) for n in "abc"], out=str(tmp_path / "o")))
    printed = capsys.readouterr().out
    assert "dataset_fingerprint" in printed and "temperature" in printed
    assert {w.split(":")[0] for w in result["warnings"]} == {"dataset_fingerprint", "temperature"}
    # settings that change the numbers on the same problems: the reply length, the verifier, seeds
    for key, a, b in (("max_new_tokens", 64, 1024), ("verifier", "exact", "math"), ("model_generation_config", 0, 1)):
        for name, value in (("a", a), ("b", b)):
            (tmp_path / name / "report.json").write_text(json.dumps({**DRIFT_REPORT, "config": {key: value}}))
        result = run_compare(resolve(CompareConfig, reports=[str(tmp_path / "a"), str(tmp_path / "b")]))
        assert [w.split(":")[0] for w in result["warnings"]] == [key]
    sampled = {"temperature": 1.0}
    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name / "report.json").write_text(json.dumps({**DRIFT_REPORT, "config": {**sampled, "seed": seed}}))
    result = run_compare(resolve(CompareConfig, reports=[str(tmp_path / "a"), str(tmp_path / "b")]))
    assert [w.split(":")[0] for w in result["warnings"]] == ["seed"]
    capsys.readouterr()
    # the same problems and settings: nothing to flag
    result = run_compare(resolve(CompareConfig, reports=[str(tmp_path / "a"), str(tmp_path / "a")], names=["x", "y"]))
    assert result["warnings"] == [] and "warning" not in capsys.readouterr().out


def test_equal_numbers_written_differently_are_not_a_mismatch():
    """1 and 1.0 (another tool's top_p) once differed as text."""
    from drift.compare import mismatches

    assert mismatches({"a": {"top_p": 1, "max_turns": 5}, "b": {"config": {"top_p": 1.0, "max_turns": 5}}}) == []
    assert mismatches({"a": {"top_p": 1}, "b": {"top_p": 0.9}}) == ["top_p: a=1, b=0.9"]
    assert mismatches({"a": {"verifier": "1"}, "b": {"verifier": 1}}) == ["verifier: a=1, b=1"]  # text is not a number
