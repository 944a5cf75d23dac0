"""Prompt and feedback text: the reference wording, the two protocols, the table lookups."""

import json

import pytest

from drift import DriftError
from drift.prompts import (
    DEFAULT_SYSTEM_PROMPT,
    FEEDBACK,
    FORMAT_FEEDBACK,
    INSTRUCTIONS,
    PROTOCOLS,
    build_instruction,
    build_messages,
    get_protocol,
)
from factories import REFERENCE_SAMPLE as REFERENCE


def test_instruction_matches_reference_wording():
    expected = (
        "You are solving Math problems. Only give the final answer between <answer> and </answer>.\n\n"
        "Problem:\nWhat is 40+85?\n\n"
        "Always output: <answer> [your answer] </answer> with no extra text. Strictly follow this format."
    )
    assert build_instruction("What is 40+85?") == expected
    assert DEFAULT_SYSTEM_PROMPT == "You're a helpful assistant."
    assert FEEDBACK == FORMAT_FEEDBACK == "Incorrect. Please think again."


def test_same_text_as_reference_file():
    rec = json.loads(REFERENCE.read_text().splitlines()[0])
    system, user, _, feedback = rec["messages"][:4]
    assert system["content"].strip() == DEFAULT_SYSTEM_PROMPT  # the reference adds a trailing space
    question = user["content"].split("Problem:\n", 1)[1].split("\n\n", 1)[0]
    assert build_instruction(question) == user["content"]
    assert feedback["content"] == FEEDBACK


def test_question_braces_are_kept():
    text = build_instruction("Simplify \\frac{a}{b} + {x} + {question}")
    assert "Simplify \\frac{a}{b} + {x} + {question}" in text


def test_choice_instruction():
    text = build_instruction("Which?\n\n(A) 1\n(B) 2", kind="choice")
    assert text.startswith("You are answering multiple-choice questions.")
    assert "Question:\nWhich?\n\n(A) 1\n(B) 2\n\n" in text
    assert set(INSTRUCTIONS) == {"math", "choice"}
    with pytest.raises(DriftError, match="unknown instruction kind 'essay'; known: choice, math"):
        build_instruction("x", kind="essay")


def test_build_messages():
    assert build_messages("2+2?") == [
        {"role": "system", "content": "You're a helpful assistant."},
        {"role": "user", "content": build_instruction("2+2?")},
    ]
    assert build_messages("2+2?", system_prompt=None) == [{"role": "user", "content": build_instruction("2+2?")}]


def test_protocols():
    assert set(PROTOCOLS) == {"simple", "full"}
    assert get_protocol("simple")("Wrong.", reward=0.0, turn=2, max_turns=5) == "Wrong."
    assert get_protocol("full")("Wrong.", reward=0.0, turn=2, max_turns=5) == (
        "Wrong.\n\nReward: 0\nTurn: 2/5\nAttempts left: 3"
    )
    assert get_protocol("full")(FEEDBACK, reward=0.0, turn=4, max_turns=5).endswith("Turn: 4/5\nAttempts left: 1")
    with pytest.raises(DriftError, match="unknown feedback protocol 'chatty'; known: full, simple"):
        get_protocol("chatty")
