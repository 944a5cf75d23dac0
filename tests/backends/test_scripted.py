"""The scripted policy: deterministic, order-independent, and its rates are the ones asked for."""

from __future__ import annotations

import pytest

from drift import DriftError
from drift.answers import extract_answer
from drift.backends import Generator, Sampling, load_backend
from drift.backends.scripted import ScriptedGenerator, expression_value, solve_arithmetic

SAMPLING = Sampling()


def question(a: int, b: int) -> list[dict]:
    return [
        {"role": "system", "content": "Put the final answer in <answer></answer>."},
        {"role": "user", "content": f"What is {a}*{b}?"},
    ]


def second_turn(conversation: list[dict], first_reply: str) -> list[dict]:
    return conversation + [
        {"role": "assistant", "content": first_reply},
        {"role": "user", "content": "Incorrect. Please think again."},
    ]


def test_is_a_generator_and_loads_by_name():
    gen = load_backend("scripted", seed=3)
    assert isinstance(gen, ScriptedGenerator)
    assert isinstance(gen, Generator)
    gen.close()


@pytest.mark.parametrize(
    ("expression", "value"),
    [("17*23", 391), ("2 + 3 * 4", 14), ("10 - 2 - 3", 5), ("2*3*4 - 1", 23), ("7 × 6", 42), ("0-5", -5)],
)
def test_expression_value(expression, value):
    assert expression_value(expression) == value


def test_solve_arithmetic_reads_the_first_user_message_with_an_expression():
    conversation = [
        {"role": "system", "content": "Rules: 1+1 is not the question."},
        {"role": "user", "content": "Hi. What is 12 + 30?"},
        {"role": "assistant", "content": "<answer>3*3</answer>"},
        {"role": "user", "content": "Incorrect."},
    ]
    assert solve_arithmetic(conversation) == "42"


def test_same_inputs_same_outputs_across_instances():
    conversations = [question(a, 7) for a in range(20)]
    seeds = list(range(100, 120))
    first = ScriptedGenerator(seed=1).generate(conversations, n=4, sampling=SAMPLING, seeds=seeds)
    again = ScriptedGenerator(seed=1).generate(conversations, n=4, sampling=SAMPLING, seeds=seeds)
    assert first == again
    other_seed = ScriptedGenerator(seed=2).generate(conversations, n=4, sampling=SAMPLING, seeds=seeds)
    assert first != other_seed


def test_outputs_do_not_depend_on_batch_order_or_composition():
    gen = ScriptedGenerator(seed=0)
    conversations = [question(a, 11) for a in range(30)]
    seeds = [1000 + i for i in range(30)]
    batch = gen.generate(conversations, n=3, sampling=SAMPLING, seeds=seeds)
    reversed_batch = gen.generate(conversations[::-1], n=3, sampling=SAMPLING, seeds=seeds[::-1])
    assert reversed_batch[::-1] == batch
    alone = [gen.generate([c], n=3, sampling=SAMPLING, seeds=[s])[0] for c, s in zip(conversations, seeds)]
    assert alone == batch
    assert [r[:2] for r in batch] == gen.generate(conversations, n=2, sampling=SAMPLING, seeds=seeds)


def test_seeds_default_to_sampling_seed_and_change_the_draws():
    gen = ScriptedGenerator(p_correct=0.0, p_format_error=0.0)
    conversation = question(17, 23)
    by_sampling_seed = gen.generate([conversation], n=8, sampling=Sampling(seed=5))
    assert by_sampling_seed == gen.generate([conversation], n=8, sampling=SAMPLING, seeds=[5])
    assert by_sampling_seed != gen.generate([conversation], n=8, sampling=SAMPLING, seeds=[6])


def test_per_turn_accuracy_format_errors_and_repeats_follow_the_probabilities():
    gen = ScriptedGenerator(p_correct=[0.3, 0.6], p_repeat=0.5, p_format_error=0.2, seed=0)
    count = 2000
    conversations = [question(a, 13) for a in range(count)]
    golds = [str(a * 13) for a in range(count)]
    first = [r[0] for r in gen.generate(conversations, n=1, sampling=SAMPLING, seeds=list(range(count)))]
    answers = [extract_answer(r, mode="lenient") for r in first]
    assert abs(sum(a == g for a, g in zip(answers, golds)) / count - 0.3) < 0.05
    assert abs(sum(extract_answer(r) is None for r in first) / count - 0.2) < 0.05

    # Turn 2, after a wrong first answer: right with p=0.6; else the old answer again with p=0.5.
    wrong = [i for i in range(count) if answers[i] != golds[i]]
    retries = [second_turn(conversations[i], first[i]) for i in wrong]
    second = [r[0] for r in gen.generate(retries, n=1, sampling=SAMPLING, seeds=wrong)]
    second_answers = [extract_answer(r, mode="lenient") for r in second]
    correct = sum(second_answers[k] == golds[i] for k, i in enumerate(wrong)) / len(wrong)
    repeated = sum(second_answers[k] == answers[i] for k, i in enumerate(wrong)) / len(wrong)
    assert abs(correct - 0.6) < 0.06
    assert abs(repeated - 0.4 * 0.5) < 0.06


def test_wrong_answers_are_fresh_when_not_repeating():
    gen = ScriptedGenerator(p_correct=0.0, p_repeat=0.0, p_format_error=0.0)
    conversation = question(17, 23)
    said = []
    for turn in range(1, 6):
        reply = gen.generate([conversation], n=1, sampling=SAMPLING, seeds=[turn])[0][0]
        answer = extract_answer(reply)
        assert answer not in said and answer != "391"
        said.append(answer)
        conversation = second_turn(conversation, reply)


def test_last_p_correct_serves_later_turns_and_unknown_gold_is_never_right():
    gen = ScriptedGenerator(p_correct=[0.0, 1.0], p_format_error=0.0)
    conversation = second_turn(second_turn(question(6, 7), "<answer>1</answer>"), "<answer>2</answer>")
    assert gen.generate([conversation], n=5, sampling=SAMPLING) == [["<answer>42</answer>"] * 5]

    never = ScriptedGenerator(p_correct=1.0, answer_fn=lambda conversation: None)
    replies = never.generate([[{"role": "user", "content": "Name a prime."}]], n=20, sampling=SAMPLING)[0]
    assert all(extract_answer(r, mode="lenient").lstrip("-").isdigit() for r in replies)


def test_answer_fn_hook_serves_non_arithmetic_tasks():
    golds = {"Capital of France?": "Paris"}
    gen = ScriptedGenerator(p_correct=1.0, p_format_error=0.0, answer_fn=lambda conv: golds.get(conv[-1]["content"]))
    assert gen.generate([[{"role": "user", "content": "Capital of France?"}]], n=1, sampling=SAMPLING) == [
        ["<answer>Paris</answer>"]
    ]


def test_tokens_are_counted_and_truncated_as_words():
    gen = ScriptedGenerator(p_format_error=1.0)  # "I think it is X." = 4 words
    replies = gen.generate([question(2, 2)] * 3, n=2, sampling=Sampling(max_new_tokens=2))
    assert all(len(r.split()) == 2 for rs in replies for r in rs)
    assert gen.tokens_generated == 12
    assert gen.tokens_prefilled == 0  # no model reads the prompts


def test_bad_arguments_raise_drift_error():
    with pytest.raises(DriftError, match="p_correct"):
        ScriptedGenerator(p_correct=[0.5, 1.5])
    with pytest.raises(DriftError, match="p_repeat"):
        ScriptedGenerator(p_repeat=-0.1)
    with pytest.raises(DriftError, match="one per conversation"):
        ScriptedGenerator().generate([question(1, 1)], n=1, sampling=SAMPLING, seeds=[1, 2])
    with pytest.raises(DriftError, match="n must be"):
        ScriptedGenerator().generate([question(1, 1)], n=0, sampling=SAMPLING)


def test_finish_reasons_say_where_max_new_tokens_cut():
    from drift.backends.base import Sampling
    from drift.backends.scripted import ScriptedGenerator

    gen = ScriptedGenerator(p_correct=1.0, p_format_error=1.0)  # "I think it is 14.": 5 words
    question = [{"role": "user", "content": "What is 2+3*4?"}]
    ((whole,),) = gen.generate([question], 1, Sampling(max_new_tokens=5), seeds=[0])
    ((cut,),) = gen.generate([question], 1, Sampling(max_new_tokens=2), seeds=[0])
    assert (whole, whole.finish_reason) == ("I think it is 14.", "stop")
    assert (cut, cut.finish_reason) == ("I think", "length")
