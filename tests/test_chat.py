"""The chat template: what a model reads, and the ids that end its turn."""

import pytest

pytest.importorskip("transformers")

from drift.chat import end_of_turn_ids, render_prompt
from drift.models import load_tokenizer


def test_render_prompt_is_the_template_with_the_generation_prompt(tiny_model):
    tok = load_tokenizer(tiny_model)
    messages = [{"role": "user", "content": "What is 2+3?"}]
    ids = render_prompt(tok, messages)
    assert tok.decode(ids) == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    # a later turn's prompt extends an earlier one (what prefix caching relies on)
    longer = render_prompt(
        tok,
        messages
        + [
            {"role": "assistant", "content": "<answer>5</answer>"},
            {"role": "user", "content": "Incorrect. Please think again."},
        ],
    )
    assert longer[: len(ids)] == ids and len(longer) > len(ids)


def test_end_of_turn_is_the_templates_marker_or_eos(tiny_model):
    tok = load_tokenizer(tiny_model)
    assert end_of_turn_ids(tok) == (tok.convert_tokens_to_ids("<|im_end|>"),)
    plain = load_tokenizer(tiny_model)
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # no special token after a turn
    assert end_of_turn_ids(plain) == (plain.eos_token_id,)
