"""Bad input to every command that reads a file: exit 2, ``file:line: field ...``, outputs untouched.

The corpus is ``tests/data/bad/`` (small committed files; the 10 MB lines are generated here).
Each bad file goes through every command that reads that kind of file:

- trajectory files: ``weight``, ``train`` (tiny model), ``eval --records``, ``export-trl``;
- report files: ``compare``;
- task files: ``rollout --task jsonl --source``;
- YAML configs: ``--config`` of every command (rollout, eval, train, weight, export-trl, compare).

Before each run the output area holds sentinel files; afterwards it must be byte-identical, with
no new files (for ``train``: no ``model/`` folder, so the error came before any training).
"""

import json
from pathlib import Path

import pytest

from drift.cli import main

BAD = Path(__file__).resolve().parent / "data" / "bad"
GOOD_REPORT = BAD.parent / "good_report.json"
SENTINEL = b"sentinel: an earlier run's output\n"

# file -> (1-based line of the error or None, text the message must hold: the field or the problem)
RECORD_FILES = {
    "truncated.jsonl": (2, "invalid JSON"),
    "wrong_type.jsonl": (2, "field 'correct'"),
    "nan.jsonl": (2, "field 'rewards'"),
    "inf.jsonl": (2, "field 'weight'"),
    "missing_field.jsonl": (2, "field 'messages'"),
    "unknown_role.jsonl": (2, "field 'messages[0].role'"),
    "empty.jsonl": (None, "empty file"),
    "blank_lines_only.jsonl": (None, "empty file"),
    "duplicate_ids.jsonl": (4, "field 'traj_id': duplicate"),
    "schema2.jsonl": (2, "field 'schema' must be 1, got 2"),
    "mixed_formats.jsonl": (2, "mixed formats"),
    "reference_wrong_type.jsonl": (1, "field 't_star'"),
    "not_an_object.jsonl": (2, "must be a JSON object"),
    "huge_integer.jsonl": (2, "invalid JSON"),
    "deep_nesting.jsonl": (2, "nested too deeply"),
    "lone_surrogate.jsonl": (2, "field 'messages[1].content'"),
    "negative_weight.jsonl": (2, "field 'weight' must be >= 0"),
    "non_utf8.jsonl": (2, "not valid UTF-8"),
    "nul_byte.jsonl": (2, "invalid JSON"),
    "huge_line_truncated.jsonl": (2, "invalid JSON"),  # generated: a 10 MB line cut short
    "huge_line_bad_field.jsonl": (2, "field 'correct'"),  # generated: a 10 MB line, one wrong field
}
# Valid trajectories, but not trainable: only the commands that need weights reject them.
UNWEIGHTED = {"missing_weight.jsonl": "no field 'weight'"}

REPORT_FILES = {
    "report_truncated.json": (2, "not a readable JSON report"),
    "report_empty.json": (1, "not a readable JSON report"),
    "report_wrong_type.json": (None, "field 'n'"),
    "report_nan.json": (None, "field 'cumulative_accuracy.1'"),
    "report_missing_field.json": (None, "field 'cumulative_accuracy'"),
    "report_not_object.json": (None, "must be a JSON object"),
    "report_bad_turn_key.json": (None, "field 'cumulative_accuracy' has key"),
    "report_huge_integer.json": (None, "not a readable JSON report"),
    "report_non_utf8.json": (None, "not a readable JSON report"),
}

TASK_FILES = {
    "task_truncated.jsonl": (2, "invalid JSON"),
    "task_wrong_type.jsonl": (2, "field 'question'"),
    "task_missing_field.jsonl": (2, "field 'answer' missing"),
    "task_non_utf8.jsonl": (2, "invalid JSON"),
    "task_inf.jsonl": (2, "invalid JSON"),
    "task_empty.jsonl": (None, "gave no prompts"),
}

CONFIG_FILES = {
    "config_unknown_key.yaml": (1, "key 'seed_typo' is not an option"),
    "config_wrong_type.yaml": (2, "key 'out' must be str"),
    "config_unsafe_tag.yaml": (1, "python/object/apply"),
    "config_duplicate_key.yaml": (2, "key 'out' is given twice"),
    "config_not_mapping.yaml": (1, "must be a mapping"),
    "config_syntax.yaml": (2, "cannot read config"),
    "config_non_utf8.yaml": (1, "not valid UTF-8"),
}


def bad_file(name: str, tmp_path: Path) -> Path:
    """The committed bad file, or (for the 10 MB cases) one generated into ``tmp_path``."""
    if not name.startswith("huge_line"):
        return BAD / name
    from factories import make_record

    first = json.dumps(make_record("p0", 0, ["4"], first_correct=1, weight=1.0))
    big = make_record("p0", 1, ["5"], first_correct=1, weight=1.0, question="x" * (10 << 20))
    if name == "huge_line_bad_field.jsonl":
        big["correct"] = ["yes"]
    line = json.dumps(big)
    if name == "huge_line_truncated.jsonl":
        line = line[: len(line) - 100]
    path = tmp_path / name
    path.write_text(first + "\n" + line + "\n")
    assert path.stat().st_size > 10 << 20
    return path


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def outputs(tmp_path: Path) -> Path:
    """An output area holding an earlier run's files: a single-file output and a run folder each."""
    area = tmp_path / "outputs"
    area.mkdir()
    for name in ("weighted.jsonl", "trl.jsonl", "rollout.jsonl"):
        (area / name).write_bytes(SENTINEL)
    for folder, name in (("eval", "report.json"), ("compare", "comparison.json")):
        (area / folder).mkdir()
        (area / folder / name).write_bytes(SENTINEL)
    (area / "train").mkdir()  # empty: a fresh run folder that a failed run must leave empty
    return area


def command(name: str, src: Path, area: Path, tiny_model: str | None) -> list[str]:
    """The command line of ``name`` reading ``src`` and writing into ``area``."""
    table = {
        "weight": lambda: ["weight", str(src), "--out", str(area / "weighted.jsonl")],
        "export-trl": lambda: ["export-trl", str(src), "--out", str(area / "trl.jsonl")],
        "eval": lambda: ["eval", "--records", str(src), "--out", str(area / "eval")],
        "train": lambda: [
            "train",
            str(src),
            "--out",
            str(area / "train"),
            "--model",
            tiny_model,
            "--dtype",
            "float32",
            "--batch-size",
            "1",
            "--micro-batch-size",
            "1",
        ],
        "compare": lambda: [
            "compare",
            str(GOOD_REPORT),
            str(src),
            "--names",
            "good,bad",
            "--out",
            str(area / "compare"),
        ],
        "rollout": lambda: [
            "rollout",
            "--task",
            "jsonl",
            "--source",
            str(src),
            "--backend",
            "scripted",
            "--verifier",
            "exact",
            "--n",
            "2",
            "--out",
            str(area / "new-rollout.jsonl"),
        ],
    }
    return table[name]()


def run_and_check(capsys, argv: list[str], area: Path, path: Path, line: int | None, text: str) -> str:
    before = snapshot(area)
    capsys.readouterr()  # drop what fixtures printed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"drift {argv[0]}: error: "), err[:500]
    where = f"{path}:{line}: " if line is not None else f"{path}"
    assert where in err, (where, err[:500])
    assert text in err, (text, err[:500])
    assert "Traceback" not in err
    assert snapshot(area) == before  # sentinels byte-identical, no new file anywhere
    assert not (area / "train" / "model").exists()
    return err


@pytest.fixture
def model_if_needed(request):
    """The tiny model for ``train`` only (the light commands never build it)."""
    return request.getfixturevalue("tiny_model") if request.node.callspec.params.get("cmd") == "train" else None


@pytest.mark.parametrize("cmd", ["weight", "export-trl", "eval", "train"])
@pytest.mark.parametrize("name", list(RECORD_FILES))
def test_bad_trajectory_file(tmp_path, capsys, model_if_needed, cmd, name):
    src = bad_file(name, tmp_path)
    area = outputs(tmp_path)
    line, text = RECORD_FILES[name]
    run_and_check(capsys, command(cmd, src, area, model_if_needed), area, src, line, text)


@pytest.mark.parametrize("cmd", ["export-trl", "train"])
@pytest.mark.parametrize("name", list(UNWEIGHTED))
def test_unweighted_file_for_commands_that_need_weights(tmp_path, capsys, model_if_needed, cmd, name):
    src = BAD / name
    area = outputs(tmp_path)
    run_and_check(capsys, command(cmd, src, area, model_if_needed), area, src, 2, UNWEIGHTED[name])


@pytest.mark.parametrize("name", list(REPORT_FILES))
def test_bad_report_file(tmp_path, capsys, name):
    area = outputs(tmp_path)
    line, text = REPORT_FILES[name]
    run_and_check(capsys, command("compare", BAD / name, area, None), area, BAD / name, line, text)


@pytest.mark.parametrize("name", list(TASK_FILES))
def test_bad_task_file(tmp_path, capsys, name):
    area = outputs(tmp_path)
    line, text = TASK_FILES[name]
    run_and_check(capsys, command("rollout", BAD / name, area, None), area, BAD / name, line, text)
    assert not (area / "new-rollout.jsonl").exists()


CONFIG_COMMANDS = {
    "rollout": lambda area, model: [
        "rollout",
        "--backend",
        "scripted",
        "--num-prompts",
        "2",
        "--out",
        str(area / "rollout.jsonl"),
    ],
    "eval": lambda area, model: ["eval", "--backend", "scripted", "--num-prompts", "2", "--out", str(area / "eval")],
    "train": lambda area, model: [
        "train",
        str(BAD.parent / "good_report.json"),
        "--model",
        model,
        "--out",
        str(area / "train"),
    ],
    "weight": lambda area, model: ["weight", str(BAD / "truncated.jsonl"), "--out", str(area / "weighted.jsonl")],
    "export-trl": lambda area, model: ["export-trl", str(BAD / "truncated.jsonl"), "--out", str(area / "trl.jsonl")],
    "compare": lambda area, model: ["compare", str(GOOD_REPORT), "--out", str(area / "compare")],
    "view": lambda area, model: ["view", str(BAD / "truncated.jsonl"), "--out", str(area / "view.html")],
}


@pytest.mark.parametrize("cmd", list(CONFIG_COMMANDS))
@pytest.mark.parametrize("name", list(CONFIG_FILES))
def test_bad_config_file(tmp_path, capsys, cmd, name):
    # The config is read before anything else, so no model is needed even for train.
    area = outputs(tmp_path)
    line, text = CONFIG_FILES[name]
    argv = CONFIG_COMMANDS[cmd](area, "no-such-model") + ["--config", str(BAD / name)]
    run_and_check(capsys, argv, area, BAD / name, line, text)
    assert not Path("/tmp/drift-pwned-by-yaml").exists()  # the unsafe tag was never constructed


def test_corpus_is_complete():
    """Every committed bad file is exercised by some test above (and none is missing)."""
    named = set(RECORD_FILES) | set(UNWEIGHTED) | set(REPORT_FILES) | set(TASK_FILES) | set(CONFIG_FILES)
    committed = {p.name for p in BAD.iterdir()}
    assert committed == {n for n in named if not n.startswith("huge_line")}


def test_outputs_never_clobber_what_they_did_not_make(tmp_path, capsys):
    """--fresh deletes only a demo's own folder; a file output given an existing folder, and
    eval --records given a folder that holds an evaluation, stop with a clear error."""
    from factories import REFERENCE_SAMPLE

    other = tmp_path / "results"
    other.mkdir()
    (other / "results.json").write_bytes(SENTINEL)
    assert main(["demo", "--quick", "--fresh", "-o", str(other)]) == 2
    assert "not a demo folder" in capsys.readouterr().err and (other / "results.json").read_bytes() == SENTINEL
    weighted = tmp_path / "w.jsonl"
    assert main(["weight", str(REFERENCE_SAMPLE), "-o", str(weighted)]) == 0
    for cmd in ("weight", "export-trl", "view"):
        assert main([cmd, str(weighted), "-o", str(other)]) == 2
        assert "is a folder" in capsys.readouterr().err, cmd
    assert sorted(p.name for p in other.iterdir()) == ["results.json"]
    evaluated = tmp_path / "ev"
    assert main(["eval", "--records", str(REFERENCE_SAMPLE), "-o", str(evaluated)]) == 0
    report = (evaluated / "report.json").read_bytes()
    assert main(["eval", "--records", str(REFERENCE_SAMPLE), "-o", str(evaluated)]) == 2
    assert "report.json exists" in capsys.readouterr().err and (evaluated / "report.json").read_bytes() == report
