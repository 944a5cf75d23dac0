"""Hostile model output through answer extraction, the four verifiers, the environment and a rollout.

What a model writes is untrusted. For every reply below: nothing executes, nothing raises, nothing
hangs past the verifier's time limit (bounds here are loose, < 30 s, for loaded machines), and
what went wrong is counted: format errors in the record, timeouts and errors in the verifier's
stats and in ``drift rollout``'s summary.json. (tests/test_answers.py and tests/test_verifiers.py
cover extraction and the math worker on their own; this file runs the whole path.)
"""

import json
import time
from pathlib import Path

import pytest

from drift.answers import MAX_ANSWER_CHARS, extract_answer, normalize_answer
from drift.env import CorrectionEnv, Problem
from drift.records import read_records, validate_record
from drift.verifiers import VERIFIERS, Verifier

PWNED = Path("/tmp/drift-hostile-pwned")  # what the injection attempts below try to create
TOWER = "9^{9^{9^{9}}}"  # sympy would compute 9^(9^(9^9)): must hit the time limit

HOSTILE = {
    "10**5000 written out": "1" + "0" * 5000,
    "negative 10**5000": "-" + "9" * 5000 + ".5",
    "exponent 10**99999": "1e99999",
    "million digits": "7" * 1_000_000,
    "1 MB reply": "x" * (1 << 20),
    "1 MB of words": "the answer is 4 " * 65_536,
    "deep frac": "\\frac{" * 3000 + "1" + "}{2}" * 3000,
    "deep sqrt": "\\sqrt{" * 400 + "2" + "}" * 400,
    "deep braces": "{" * 100_000 + "}" * 100_000,
    "power tower": TOWER,
    "short deep frac": "\\frac{" * 50 + "1" + "}{2}" * 50,
    "NUL bytes": "4\x00\x00\x00",
    "control characters": "\x1b[2J\x07\x08\r4\x7f\u202e\ufeff",
    "only NUL": "\x00" * 10_000,
    "python injection": f"__import__('os').system('touch {PWNED}')",
    "eval injection": f"eval(\"open('{PWNED}', 'w')\")",
    "sympify injection": f"Symbol('x').__class__.__init__.__globals__['__builtins__']['open']('{PWNED}','w')",
    "jinja injection": "{{ cycler.__init__.__globals__.os.system('touch " + str(PWNED) + "') }}",
    "shell injection": f"$(touch {PWNED}) `touch {PWNED}`",
    "latex injection": f"\\input{{/etc/passwd}} \\immediate\\write18{{touch {PWNED}}}",
    "unbalanced open tags": "<answer>" * 10_000,
    "unbalanced close tags": "</answer>" * 10_000,
    "tags inside out": "</answer>4<answer>",
    "nested tags": "<answer><answer>4</answer>",
    "unbalanced boxed": "\\boxed{" * 10_000 + "4",
    "many hashes": "#### " * 50_000,
    "lone surrogate": "4\ud800",
    "empty": "",
}
# How a reply reaches the environment: as the model wrote it, or wrapped in the answer tags.
WRAPS = {"raw": lambda h: h, "tagged": lambda h: f"<answer>{h}</answer>"}


@pytest.fixture(autouse=True)
def no_pwned_file():
    PWNED.unlink(missing_ok=True)
    yield
    assert not PWNED.exists(), "model text was executed"


@pytest.mark.parametrize("wrap", WRAPS)
@pytest.mark.parametrize("name", HOSTILE)
def test_extract_and_normalize_never_raise(name, wrap):
    text = WRAPS[wrap](HOSTILE[name])
    start = time.perf_counter()
    for mode in ("strict", "lenient"):
        found = extract_answer(text, mode=mode)
        if found is not None:
            assert found and len(found) <= MAX_ANSWER_CHARS and found in text
            assert isinstance(normalize_answer(found), str)
    assert time.perf_counter() - start < 30.0


@pytest.mark.parametrize("name", sorted(set(VERIFIERS) - {"math"}))
def test_cheap_verifiers_never_raise_on_hostile_prediction_or_gold(name):
    check = Verifier(name)
    start = time.perf_counter()
    for text in HOSTILE.values():
        assert check(text, "4") in (True, False)
        assert check("4", text) in (True, False)  # a hostile gold (a bad dataset) too
        assert check(text, text) in (True, False)
    assert time.perf_counter() - start < 30.0
    assert check.stats.errors == 0 and check.stats.timeouts == 0
    assert check.stats.calls == 3 * len(HOSTILE)


def run_episode(verifier, answer_mode: str, wrap: str) -> tuple[dict, float]:
    """One episode whose every turn is one hostile reply; returns its record and the slowest turn."""
    env = CorrectionEnv(verifier, max_turns=len(HOSTILE), answer_mode=answer_mode)
    env.reset(Problem("hostile-0", "What is 2+2?", "5", "arithmetic"))  # gold 5: nothing here is right
    slowest = 0.0
    for text in HOSTILE.values():
        start = time.perf_counter()
        result = env.step(WRAPS[wrap](text))
        slowest = max(slowest, time.perf_counter() - start)
        assert result.reward == 0.0 and not result.correct
    return env.record(traj_id=0), slowest


@pytest.mark.parametrize("answer_mode", ["strict", "lenient"])
@pytest.mark.parametrize("wrap", WRAPS)
@pytest.mark.parametrize("name", sorted(set(VERIFIERS) - {"math"}))
def test_environment_scores_hostile_replies_and_counts_format_errors(name, wrap, answer_mode):
    verifier = Verifier(name)
    rec, slowest = run_episode(verifier, answer_mode, wrap)
    validate_record(rec)
    assert len(rec["correct"]) == len(HOSTILE) and rec["first_correct_turn"] is None
    # every reply with no parsable answer is a format error; every parsable one was verified once
    assert rec["format_errors"] == rec["answers"].count(None) > 0
    assert verifier.stats.calls == len(HOSTILE) - rec["format_errors"]
    assert verifier.stats.errors == 0 and verifier.stats.timeouts == 0
    assert slowest < 30.0
    json.dumps(rec)  # the record is plain data


@pytest.fixture(scope="module")
def math_verifier():
    pytest.importorskip("math_verify")
    check = Verifier("math", timeout=1.0)
    assert check("\\frac{1}{2}", "0.5")  # boot the worker outside the timed part
    return check


@pytest.mark.parametrize("wrap", WRAPS)
def test_math_verifier_in_the_environment(math_verifier, wrap):
    before = math_verifier.stats.as_dict()
    rec, slowest = run_episode(math_verifier, "lenient", wrap)
    validate_record(rec)
    after = math_verifier.stats.as_dict()
    calls = after["calls"] - before["calls"]
    timeouts = after["timeouts"] - before["timeouts"]
    assert calls == len(HOSTILE) - rec["format_errors"]
    assert rec["first_correct_turn"] is None
    if wrap == "tagged":  # the tower reaches math-verify as the answer: it must hit the limit
        assert timeouts >= 1
    assert slowest < 30.0  # limit 1 s, plus the worker's restart on a loaded machine


def hostile_policy(conversation):
    """A scripted policy's "answer" per turn: the tower, injections, a 1 MB reply, unbalanced tags."""
    turn = 1 + sum(m["role"] == "assistant" for m in conversation)
    return [TOWER, HOSTILE["python injection"], "4\x00\ud800" + "x" * (1 << 20), "</answer><answer>"][turn - 1]


def made_verifiers(monkeypatch) -> list:
    """The verifiers a command builds (drift.verifiers.get_verifier), to compare its summary with."""
    from drift import verifiers

    made, real = [], verifiers.get_verifier
    monkeypatch.setattr(verifiers, "get_verifier", lambda *a, **kw: made.append(real(*a, **kw)) or made[-1])
    return made


def test_rollout_summary_counts_timeouts_and_format_errors(tmp_path, monkeypatch):
    pytest.importorskip("math_verify")
    from drift.backends.scripted import ScriptedGenerator
    from drift.cli import main

    def from_config(cls, cfg):
        assert cfg.backend == "scripted"
        return cls(p_correct=1.0, p_format_error=0.0, answer_fn=hostile_policy, seed=cfg.seed)

    monkeypatch.setattr(ScriptedGenerator, "from_config", classmethod(from_config))
    made = made_verifiers(monkeypatch)
    out = tmp_path / "hostile.jsonl"
    start = time.perf_counter()
    assert (
        main(
            [
                "rollout",
                "--backend",
                "scripted",
                "--task",
                "arithmetic",
                "--num-prompts",
                "2",
                "--n",
                "1",
                "--max-turns",
                "4",
                "--verifier",
                "math",
                "--verifier-timeout",
                "1",
                "--max-new-tokens",
                "100000",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert time.perf_counter() - start < 120.0  # two timeouts and two worker restarts, on a loaded machine
    records = read_records(out)
    summary = json.loads((tmp_path / "hostile.summary.json").read_text())
    assert len(records) == 2 and all(r["first_correct_turn"] is None for r in records)
    assert all(len(r["correct"]) == 4 for r in records)
    assert [r["answers"][3] for r in records] == [None, None]  # turn 4: "<answer></answer><answer></answer>"
    assert summary["format_errors"] == sum(r["format_errors"] for r in records) >= 2
    # the summary gives the rollout's verifier's own counts. Per trajectory: the tower times out
    # (turn 1); the injection reaches math-verify, which parses it and finds it wrong (turn 2, no
    # error); the 1 MB answer is longer than MAX_MATH_CHARS, wrong without the worker (turn 3);
    # turn 4 has no answer (a format error, no call). So 3 calls and no error per trajectory.
    (verifier,) = made
    assert summary["verifier_calls"] == verifier.stats.calls == sum(4 - r["format_errors"] for r in records) == 6
    assert summary["verifier_timeouts"] == verifier.stats.timeouts >= 2  # (a loaded machine may time out more)
    assert summary["verifier_errors"] == verifier.stats.errors == 0
    assert records[0]["messages"][2]["content"] == f"<answer>{TOWER}</answer>"
    assert records[0]["messages"][6]["content"].startswith("<answer>4\x00\ufffd")  # a lone surrogate, replaced


def test_rollout_summary_counts_verifier_errors(tmp_path, monkeypatch):
    """A verifier that raises (math-verify failing on some text) scores the answer wrong and is
    counted: 3 prompts x 2 trajectories, each answering two raising replies and then the right one,
    are 12 errors in 18 calls."""
    from drift import verifiers
    from drift.backends.scripted import ScriptedGenerator, solve_arithmetic
    from drift.cli import main

    def exact_but_raising(prediction, gold):
        if prediction in ("boom", "oops"):
            raise {"boom": RuntimeError, "oops": ValueError}[prediction](prediction)
        return verifiers.verify_exact(prediction, gold)

    def policy(conversation):
        turn = 1 + sum(m["role"] == "assistant" for m in conversation)
        return ["boom", "oops"][turn - 1] if turn <= 2 else solve_arithmetic(conversation)

    def from_config(cls, cfg):
        return cls(p_correct=1.0, p_repeat=0.0, p_format_error=0.0, answer_fn=policy, seed=cfg.seed)

    monkeypatch.setattr(ScriptedGenerator, "from_config", classmethod(from_config))
    monkeypatch.setitem(verifiers.VERIFIERS, "exact", exact_but_raising)
    made = made_verifiers(monkeypatch)
    out = tmp_path / "raising.jsonl"
    flags = ["rollout", "--backend", "scripted", "--task", "arithmetic", "--num-prompts", "3", "--n", "2",
             "--max-turns", "4", "--verifier", "exact", "--out", str(out)]  # fmt: skip
    assert main(flags) == 0
    records = read_records(out)
    summary = json.loads((tmp_path / "raising.summary.json").read_text())
    assert len(records) == 6 and all(r["correct"] == [False, False, True] for r in records)
    (verifier,) = made
    assert summary["verifier_errors"] == verifier.stats.errors == 6 * 2
    assert summary["verifier_calls"] == verifier.stats.calls == 6 * 3
    assert summary["verifier_timeouts"] == verifier.stats.timeouts == 0
