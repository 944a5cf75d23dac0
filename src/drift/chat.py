"""The chat template: a conversation as the ids a model reads, and the ids that end its turn.

Generation (drift.backends) and training (drift.examples) render a conversation the same way,
through :func:`render_prompt`, so a trained prompt is token for token what the policy read. A
reply recorded as text ends with the template's own end-of-turn marker (:func:`end_of_turn_ids`:
``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3, ``<end_of_turn>`` for Gemma), which is not
always the tokenizer's EOS.
"""

from __future__ import annotations

from functools import lru_cache


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """The ids of ``messages`` under the tokenizer's chat template, generation prompt added."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@lru_cache(maxsize=16)
def end_of_turn_ids(tokenizer) -> tuple[int, ...]:
    """The ids the chat template writes after an assistant reply, up to and including its first
    special token: what the model generates to end a turn. A template that writes no special
    token there gets the tokenizer's EOS."""
    probe = "drift-end-of-turn-probe"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], tokenize=False
    )
    ids = tokenizer(text[text.rindex(probe) + len(probe) :], add_special_tokens=False)["input_ids"]
    added = getattr(tokenizer, "added_tokens_decoder", {})  # special tokens a tokenizer names in no role
    special = set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}
    end = next((k for k, i in enumerate(ids) if i in special), None)
    return tuple(ids[: end + 1]) if end is not None else (tokenizer.eos_token_id,)
