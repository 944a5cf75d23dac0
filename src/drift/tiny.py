"""A tiny randomly initialised chat model, built offline in about a second.

Used by ``drift demo --quick`` and the tests: a 2-layer Llama with a byte-level BPE tokenizer
trained on arithmetic-flavoured text and a ChatML chat template (the same template family as
SmolLM2), so every code path that needs "a real Hugging Face chat model" runs without a hub.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    lines = [
        "You're a helpful assistant.",
        "Incorrect. Please think again.",
        "system",
        "user",
        "assistant",
        "Only give the final answer between <answer> and </answer>. Problem:",
    ]
    for a in range(0, 100, 7):
        for b in range(0, 100, 11):
            lines.append(f"What is {a}+{b}? <answer>{a + b}</answer> What is {a}*{b}? <answer>{a * b}</answer>")
            lines.append(f"What is {a}-{b}? <answer>{a - b}</answer>")
    return lines


def build_tiny_model(folder: str | Path, vocab_size: int = 512, seed: int = 0, head_dim: int = 16) -> Path:
    """Write a tiny random chat model (config, safetensors, tokenizer) into ``folder``: 2 layers,
    4 heads of ``head_dim`` (vLLM's CPU attention wants 32 or more)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=4 * head_dim,
        intermediate_size=8 * head_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
