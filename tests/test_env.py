"""The correction environment: turn logic, feedback, format errors, records."""

import pytest

from drift import DriftError
from drift.env import CorrectionEnv, Environment, Problem, StepResult, make_env
from drift.prompts import FEEDBACK, build_instruction
from drift.records import validate_record
from drift.tasks import get_task
from drift.verifiers import VERIFIERS, Verifier
from drift.weighting import repetition_penalty, trajectory_return

EXAMPLE = Problem("arith-000000", "What is 40+85?", "125", "arithmetic")


def run(env, replies, example=EXAMPLE):
    env.reset(example)
    return [env.step(r) for r in replies]


def test_correct_at_turn_one_stops():
    env = CorrectionEnv(VERIFIERS["numeric"], max_turns=5)
    (result,) = run(env, ["<answer>125</answer>"])
    assert result == StepResult(reward=1.0, done=True, correct=True, answer="125", feedback=None)
    assert [m["role"] for m in env.messages] == ["system", "user", "assistant"]
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("<answer>125</answer>")
    rec = validate_record(env.record(traj_id=3))
    assert (rec["traj_id"], rec["first_correct_turn"], rec["rewards"], rec["format_errors"]) == (3, 1, [1.0], 0)


def test_wrong_gets_feedback_then_correct():
    env = CorrectionEnv(VERIFIERS["numeric"], max_turns=5)
    first, second = run(env, ["<answer>135</answer>", "<answer>125.0</answer>"])
    assert first == StepResult(0.0, False, False, "135", FEEDBACK)
    assert env.messages[3] == {"role": "user", "content": FEEDBACK}
    assert second.correct and second.done and second.answer == "125"
    assert env.correct == [False, True] and env.rewards == [0.0, 1.0] and env.first_correct_turn == 2
    assert env.messages[-1] == {"role": "assistant", "content": "<answer>125.0</answer>"}


def test_format_error_uses_a_turn_and_its_own_feedback():
    env = CorrectionEnv(VERIFIERS["numeric"], max_turns=3, format_feedback="Use the tags.")
    results = run(env, ["It is 125", "<answer>.</answer>", "<answer>125</answer>"])
    assert [r.answer for r in results] == [None, None, "125"]
    assert [r.feedback for r in results] == ["Use the tags.", "Use the tags.", None]
    assert env.format_errors == 2 and env.turn == 3
    rec = validate_record(env.record(0))
    assert rec["answers"] == [None, None, "125"] and rec["format_errors"] == 2 and rec["first_correct_turn"] == 3


def test_max_turns_ends_without_trailing_feedback():
    env = CorrectionEnv(VERIFIERS["numeric"], max_turns=3)
    results = run(env, ["<answer>1</answer>", "<answer>2</answer>", "<answer>3</answer>"])
    assert [r.done for r in results] == [False, False, True]
    assert results[-1].feedback is None
    assert len(env.messages) == 2 + 3 + 2  # system, user; 3 replies; feedback after the first two
    assert env.messages[-1]["role"] == "assistant"
    rec = validate_record(env.record(0))
    assert rec["first_correct_turn"] is None and rec["correct"] == [False] * 3 and rec["max_turns"] == 3


def test_record_fields_and_extras():
    env = CorrectionEnv(VERIFIERS["numeric"], max_turns=2)
    run(env, ["<answer>135</answer>", "<answer>125</answer>"])
    rec = validate_record(env.record(7, sampling={"temperature": 1.0}, model="tiny"))
    assert rec["schema"] == 1 and rec["prompt_id"] == "arith-000000" and rec["task"] == "arithmetic"
    assert rec["question"] == "What is 40+85?" and rec["gold"] == "125"
    assert rec["messages"][1]["content"] == build_instruction("What is 40+85?")
    assert rec["sampling"] == {"temperature": 1.0} and rec["model"] == "tiny"
    rec["messages"].append({"role": "user", "content": "x"})  # a copy: the env is untouched
    assert len(env.messages) == 5
    with pytest.raises(ValueError, match="overwrite"):
        env.record(0, answers=[])


def test_repetition_and_return_from_a_record():
    # wrong "70", unparsable, right "80" at turn 3: R = 0.9^2 - 0.1 * 1 - 0.5 * (1 - 2/2) = 0.71
    env = CorrectionEnv(VERIFIERS["numeric"], max_turns=5)
    run(env, ["<answer>70</answer>", "no idea", "<answer>80</answer>"], Problem("p", "q", "80", "t"))
    rec = env.record(0)
    assert trajectory_return(
        rec["rewards"], rec["answers"], rec["format_errors"], gamma=0.9, lam=0.5, format_penalty=0.1
    ) == pytest.approx(0.71)
    # the same answer written three ways counts once: 0.5 * (1 - 2/4) = 0.25
    env = CorrectionEnv(VERIFIERS["numeric"], max_turns=4)
    run(
        env,
        ["<answer>1,000</answer>", "<answer>1000.0</answer>", "<answer> 1000 </answer>", "<answer>7</answer>"],
        Problem("p", "q", "5", "t"),
    )
    assert env.answers == ["1000", "1000", "1000", "7"]
    assert repetition_penalty(env.answers, lam=0.5) == pytest.approx(0.25)
    # ... also as the verifier reads it: the same choice, a fraction and its decimal
    env = CorrectionEnv(Verifier("choice"), max_turns=3, instruction="choice")
    run(
        env,
        ["<answer>B</answer>", "<answer>(b)</answer>", "<answer>The answer is B</answer>"],
        Problem("p", "q", "A", "t"),
    )
    assert env.answers == ["B", "B", "B"] and repetition_penalty(env.answers, lam=0.5) == pytest.approx(0.5 * 2 / 3)
    env = CorrectionEnv(Verifier("numeric"), max_turns=2)
    run(env, ["<answer>1/2</answer>", "<answer>0.5</answer>"], Problem("p", "q", "3", "t"))
    assert env.answers[0] == env.answers[1]


def test_full_protocol_feedback():
    env = CorrectionEnv(VERIFIERS["numeric"], max_turns=3, protocol="full")
    first, second = run(env, ["<answer>1</answer>", "<answer>2</answer>"])
    assert first.feedback == "Incorrect. Please think again.\n\nReward: 0\nTurn: 1/3\nAttempts left: 2"
    assert second.feedback.endswith("Turn: 2/3\nAttempts left: 1")


def test_answer_modes():
    strict = CorrectionEnv(VERIFIERS["numeric"], max_turns=1)
    lenient = CorrectionEnv(VERIFIERS["numeric"], max_turns=1, answer_mode="lenient")
    assert run(strict, ["The answer is 125."])[0].answer is None
    assert run(lenient, ["The answer is 125."])[0].correct is True


def test_reset_starts_over_and_system_prompt_none():
    env = CorrectionEnv(VERIFIERS["exact"], max_turns=2, system_prompt=None)
    run(env, ["<answer>no</answer>", "<answer>yes</answer>"], Problem("a", "Yes or no?", "Yes", "t"))
    messages = env.reset(EXAMPLE)
    assert [m["role"] for m in messages] == ["user"] and env.turn == 0 and env.answers == []
    messages.append({"role": "assistant", "content": "x"})  # the returned list is a copy
    assert len(env.messages) == 1


def test_verifier_sees_answer_as_written_and_gold():
    seen = []
    env = CorrectionEnv(lambda p, g: seen.append((p, g)) or False, max_turns=1)
    run(env, ["<answer> \\text{Big} </answer>"])
    assert seen == [("\\text{Big}", "125")]
    assert env.answers == ["big"]


def test_bad_settings_and_misuse():
    with pytest.raises(DriftError, match="max_turns"):
        CorrectionEnv(VERIFIERS["exact"], max_turns=0)
    with pytest.raises(DriftError, match="unknown feedback protocol"):
        CorrectionEnv(VERIFIERS["exact"], protocol="loud")
    with pytest.raises(DriftError, match="unknown answer mode 'loose'"):
        CorrectionEnv(VERIFIERS["exact"], answer_mode="loose")
    env = CorrectionEnv(VERIFIERS["exact"])
    with pytest.raises(RuntimeError, match="before reset"):
        env.step("x")
    env.reset(EXAMPLE)
    with pytest.raises(RuntimeError, match="at least one step"):
        env.record(0)


def test_make_env_from_task_spec():
    verifier = Verifier("numeric")
    envs = [make_env(get_task("arithmetic"), max_turns=2, verifier=verifier) for _ in range(2)]
    for env in envs:
        run(env, ["<answer>125</answer>"])
    assert verifier.stats.calls == 2  # one verifier (and its counts) shared by many episodes
    assert isinstance(envs[0], Environment)
    mcq = make_env(get_task("mcq"), max_turns=1)
    messages = mcq.reset(Problem("m", "Pick.\n\n(A) 1\n(B) 2", "B", "mcq"))
    assert messages[1]["content"].startswith("You are answering multiple-choice questions.")
    assert mcq.step("<answer>(B)</answer>").correct
