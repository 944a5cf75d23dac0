"""`drift weight` end to end: exact weights on reference rollouts, bad input, config files."""

import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from drift.cli import main
from drift.records import read_records, write_records
from factories import REFERENCE_SAMPLE as REFERENCE


def _no_duplicate_keys(pairs):
    assert len({k for k, _ in pairs}) == len(pairs), pairs
    return dict(pairs)


def expected_weights(raw, beta, gamma, lam=0.5, penalty_per_error=0.1):
    """Independent re-derivation from the reference layout's own fields."""
    returns = []
    for r in raw:
        turns = sum(m["role"] == "assistant" for m in r["messages"])
        disc = sum(gamma ** (t - 1) * r["turn_rewards"][f"t{t}"] for t in range(1, turns + 1))
        norms = r["answer_norms"]
        rep = lam * (1 - len(set(norms)) / len(norms)) if norms else 0.0
        errors = turns - len(norms)
        returns.append(disc - penalty_per_error * errors - rep)
    groups = defaultdict(list)
    for i, r in enumerate(raw):
        groups[r["prompt_id"]].append(i)
    weights = [0.0] * len(raw)
    for idx in groups.values():
        z = sum(math.exp(returns[i] / beta) for i in idx) / len(idx)
        for i in idx:
            weights[i] = math.exp(returns[i] / beta) / z
    return returns, weights


def _input(tmp_path, layout: str) -> Path:
    """The reference rollouts as given, converted to our layout, or already weighted once (β = 3)."""
    if layout == "reference":
        return REFERENCE
    ours = tmp_path / "ours.jsonl"
    write_records(ours, read_records(REFERENCE))
    if layout == "drift":
        return ours
    weighted = tmp_path / "weighted-before.jsonl"
    assert main(["weight", str(ours), "--out", str(weighted), "--beta", "3"]) == 0
    return weighted


@pytest.mark.parametrize("layout", ["reference", "drift", "drift-weighted"])
@pytest.mark.parametrize("beta,gamma", [(0.1, 0.9), (0.2, 0.7), (1.0, 0.5), (0.05, 1.0)])
def test_weights_equal_the_formula(tmp_path, capsys, beta, gamma, layout):
    # drift-layout input takes the streaming path (fields spliced into the lines), re-weighting
    # an already weighted file replaces its fields; reference input is converted record by record
    out = tmp_path / "w.jsonl"
    source = _input(tmp_path, layout)
    capsys.readouterr()
    assert main(["weight", str(source), "--out", str(out), "--beta", str(beta), "--gamma", str(gamma)]) == 0
    raw = [json.loads(line) for line in REFERENCE.read_text().splitlines()]
    returns, weights = expected_weights(raw, beta, gamma)
    got = [json.loads(line, object_pairs_hook=_no_duplicate_keys) for line in out.read_text().splitlines()]
    assert len(got) == len(raw)
    for rec, r, w, src in zip(got, returns, weights, raw):
        assert rec["prompt_id"] == src["prompt_id"] and rec["messages"] == src["messages"]
        assert rec["return"] == pytest.approx(r, rel=1e-12, abs=1e-12)
        assert abs(rec["weight"] - w) <= 1e-9 * w
    saved = yaml.safe_load((tmp_path / "w.config.yaml").read_text())
    assert saved["beta"] == beta and saved["gamma"] == gamma and saved["scheme"] == "drift"
    summary = json.loads((tmp_path / "w.summary.json").read_text())
    assert summary["records"] == 48 and summary["groups"] == 12
    assert "ess_ratio" in capsys.readouterr().out


def test_reference_output_and_rft(tmp_path):
    out = tmp_path / "ref.jsonl"
    assert main(["weight", str(REFERENCE), "-o", str(out), "--to-format", "reference", "--scheme", "rft"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    raw = [json.loads(line) for line in REFERENCE.read_text().splitlines()]
    assert len(got) == sum(r["t_star"] is not None for r in raw)
    assert all("turn_rewards" in g and g["weight"] == 1.0 for g in got)


def bad_inputs(tmp_path):
    good_line = REFERENCE.read_text().splitlines()[0]
    rec = json.loads(good_line) if good_line else None
    cases = {
        "truncated.jsonl": (good_line[: len(good_line) // 2] + "\n").encode(),
        "wrong_type.jsonl": (json.dumps({**rec, "answer_norms": "135"}) + "\n").encode(),
        "nan.jsonl": (json.dumps({**rec, "turn_rewards": {**rec["turn_rewards"], "t1": float("nan")}}) + "\n").encode(),
        "inf.jsonl": (json.dumps({**rec, "turn_rewards": {**rec["turn_rewards"], "t1": float("inf")}}) + "\n").encode(),
        "role.jsonl": (
            json.dumps({**rec, "messages": rec["messages"] + [{"role": "wizard", "content": ""}]}) + "\n"
        ).encode(),
        "empty.jsonl": b"",
        "no_prompt_id.jsonl": (json.dumps({k: v for k, v in rec.items() if k != "prompt_id"}) + "\n").encode(),
        "latin1.jsonl": good_line.replace("assistant", "assistänt").encode("latin-1") + b"\n",
    }
    paths = {}
    for name, data in cases.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


BAD_INPUT_MESSAGES = {
    "truncated.jsonl": ":1: invalid JSON (",  # with the column
    "wrong_type.jsonl": ":1: field 'answer_norms' must be a list",
    "nan.jsonl": ":1: field 'turn_rewards.t1' must be a finite number",
    "inf.jsonl": ":1: field 'turn_rewards.t1' must be a finite number",
    "role.jsonl": ":1: field 'messages[11].role' must be one of",
    "empty.jsonl": ": no records (empty file)",
    "no_prompt_id.jsonl": ":1: field 'prompt_id'",
    "latin1.jsonl": ":1: line is not valid UTF-8",
}


def test_every_bad_input_exits_2_with_location_and_writes_nothing(tmp_path, capsys):
    cases = bad_inputs(tmp_path)
    assert set(cases) == set(BAD_INPUT_MESSAGES)
    for name, path in cases.items():
        out = tmp_path / "out" / f"{name}.weighted.jsonl"
        assert main(["weight", str(path), "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert f"{path}{BAD_INPUT_MESSAGES[name]}" in err, (name, err)
        if name == "truncated.jsonl":
            assert "column" in err, err
        assert not out.exists()
        assert not out.parent.exists() or not any(out.parent.iterdir())


@pytest.mark.parametrize("beta", ["0", "-0.1"])
def test_non_positive_beta_exits_2(tmp_path, capsys, beta):
    out = tmp_path / "w.jsonl"
    assert main(["weight", str(REFERENCE), "--out", str(out), "--beta", beta]) == 2
    assert "beta" in capsys.readouterr().err
    assert not out.exists()


def test_existing_output_is_untouched_by_a_failed_run(tmp_path):
    out = tmp_path / "w.jsonl"
    out.write_text("keep me\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(REFERENCE.read_text().splitlines()[0] + "\n{oops\n")
    assert main(["weight", str(bad), "--out", str(out)]) == 2
    assert out.read_text() == "keep me\n"


def test_yaml_config_and_flag_precedence(tmp_path):
    cfg = tmp_path / "w.yaml"
    cfg.write_text("beta: 0.5\ngamma: 0.7\nscheme: drift\n")
    out = tmp_path / "w.jsonl"
    assert main(["weight", str(REFERENCE), "--out", str(out), "--config", str(cfg), "--gamma", "0.8"]) == 0
    saved = yaml.safe_load((tmp_path / "w.config.yaml").read_text())
    assert saved["beta"] == 0.5 and saved["gamma"] == 0.8


@pytest.mark.parametrize(
    "text,message",
    [
        ("beta: 0.5\nbogus: 1\n", "c.yaml:2: key 'bogus' is not an option"),
        ("beta: high\n", "c.yaml:1: key 'beta' must be float"),
        ("scheme: magic\n", "c.yaml:1: key 'scheme' must be one of"),
        ("- 1\n- 2\n", "must be a mapping"),
    ],
)
def test_bad_config_files(tmp_path, capsys, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert main(["weight", "in.jsonl", "--out", str(tmp_path / "o.jsonl"), "--config", str(cfg)]) == 2
    assert message in capsys.readouterr().err


def test_console_script_runs(tmp_path):
    out = tmp_path / "w.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "drift.cli", "weight", str(REFERENCE), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 48 records" in proc.stdout
    help_text = subprocess.run(
        [sys.executable, "-m", "drift.cli", "weight", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--beta" in help_text and "exp(R/beta)" in help_text


# drift weight's defaults (drift.config.groups.WeightingOptions), as the help documents them
WEIGHT_DEFAULTS = {"scheme": "drift", "beta": 0.1, "clip": None, "zero_variance": "keep", "all_fail": "keep"}


@pytest.mark.parametrize(
    "flags, changed",
    [
        ([], {}),
        (["--scheme", "rwr"], {"scheme": "rwr"}),
        (["--scheme", "sft"], {"scheme": "sft"}),
        (["--scheme", "rft"], {"scheme": "rft"}),
        (["--zero-variance", "drop"], {"zero_variance": "drop"}),
        (["--all-fail", "drop"], {"all_fail": "drop"}),
        (["--clip", "1.5"], {"clip": 1.5}),
        (["--scheme", "rwr", "--beta", "0.5"], {"scheme": "rwr", "beta": 0.5}),
    ],
)
def test_streaming_output_equals_the_api_on_every_option(tmp_path, flags, changed):
    from drift.weighting import WeightingParams, compute_weights
    from factories import make_record

    recs = [
        make_record("a", 0, ["1"], 1),
        make_record("a", 1, ["2", "1"], 2),
        make_record("a", 2, ["2", "2"]),
        make_record("b", 0, ["5", "6"]),
        make_record("b", 1, ["5", "6"]),  # zero variance, all fail
        make_record("c", 0, ["7", None]),
        make_record("c", 1, ["8"]),  # all fail, returns differ
        make_record("d", 0, ["3"], 1),
        make_record("d", 1, ["3"], 1),
    ]  # all pass
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, recs)
    assert main(["weight", str(src), "--out", str(out), *flags]) == 0
    saved = yaml.safe_load((tmp_path / "out.config.yaml").read_text())  # the resolved config of the run
    # the run took the flags as passed (a flag the parser dropped would leave its default here, and
    # the API below, given the same saved config, would agree with the file all the same)
    assert {k: saved[k] for k in WEIGHT_DEFAULTS} == {**WEIGHT_DEFAULTS, **changed}
    params = WeightingParams(**{k: saved[k] for k in WeightingParams.__dataclass_fields__})
    returns, weights = compute_weights(recs, params)
    expected = [{**r, "return": ret, "weight": w} for r, ret, w in zip(recs, returns, weights) if w is not None]
    assert [json.loads(line) for line in out.read_text().splitlines()] == expected


def test_groups_of_unequal_size_are_reported(tmp_path, capsys):
    """A file cut short in a prompt's group (a rollout killed mid-chunk, weighted before --resume)
    normalises that group over fewer trajectories: the summary gives the sizes and a warning says so."""
    records = read_records(REFERENCE)
    ours = tmp_path / "ours.jsonl"
    write_records(ours, records[:-1])  # one trajectory of the last prompt missing
    sizes = [sum(r["prompt_id"] == p for r in records) for p in {r["prompt_id"] for r in records}]
    assert main(["weight", str(ours), "--out", str(tmp_path / "w.jsonl")]) == 0
    summary = json.loads((tmp_path / "w.summary.json").read_text())
    assert summary["group_size_min"] == min(sizes) - 1 and summary["group_size_max"] == max(sizes)
    assert "trajectories per prompt differ" in capsys.readouterr().out


def test_export_trl_end_to_end_from_a_weighted_file(tmp_path):
    """drift weight, then drift export-trl as a user runs it: one row per trained turn, the weights
    carried over (dropped records leave no row), and the sidecars written."""
    weighted, out = tmp_path / "w.jsonl", tmp_path / "trl" / "rows.jsonl"
    assert main(["weight", str(REFERENCE), "--out", str(weighted), "--all-fail", "drop"]) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "drift.cli", "export-trl", str(weighted), "-o", str(out), "--target", "all"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    records = [r for r in read_records(weighted) if r["weight"] is not None]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == sum(len(r["correct"]) for r in records) > 0  # every assistant turn of a kept record
    assert math.fsum(r["weight"] for r in rows) == pytest.approx(
        math.fsum(r["weight"] * len(r["correct"]) for r in records)
    )
    first = records[0]
    replies = [m["content"] for m in first["messages"] if m["role"] == "assistant"]
    mine = [r for r in rows if (r["prompt_id"], r["traj_id"]) == (first["prompt_id"], first["traj_id"])]
    assert [r["completion"][0]["content"] for r in mine] == replies and [r["turn"] for r in mine] == list(
        range(1, len(replies) + 1)
    )
    summary = json.loads((tmp_path / "trl" / "rows.summary.json").read_text())
    assert summary["rows"] == len(rows) and summary["records"] == len(read_records(weighted))
    assert yaml.safe_load((tmp_path / "trl" / "rows.config.yaml").read_text())["target"] == "all"


def test_a_rerun_leaves_no_sidecar_of_the_run_before(tmp_path):
    """drift weight with --plot, then again with another beta and no --plot: the old plot (of the
    old weights) once stayed beside the new file, and drift view showed it as this file's."""
    out = tmp_path / "w.jsonl"
    assert main(["weight", str(REFERENCE), "--out", str(out), "--plot"]) == 0
    assert (tmp_path / "w.weights.png").exists()
    assert main(["weight", str(REFERENCE), "--out", str(out), "--beta", "1.0"]) == 0
    assert not (tmp_path / "w.weights.png").exists()
    assert yaml.safe_load((tmp_path / "w.config.yaml").read_text())["beta"] == 1.0
    assert json.loads((tmp_path / "w.summary.json").read_text())["records"] > 0
