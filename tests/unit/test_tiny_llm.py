"""The tiny model vLLM serves in the local stack and the tests: made the same, byte for byte, every time, with
the shape and chat template vLLM is given (tests/integration/test_vllm.py serves it)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer

from ragtrace_tools.devstack import tiny_llm


def test_the_tiny_model_is_deterministic_chatml_and_llama_shaped(tmp_path: Path) -> None:
    first, second = tiny_llm.make(tmp_path / "a"), tiny_llm.make(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} differs between two makes"

    config = json.loads((first / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    shape = {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads")}
    assert shape == {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}
    assert config["max_position_embeddings"] == tiny_llm.MAX_POSITIONS

    tokenizer = AutoTokenizer.from_pretrained(first)
    assert 900 <= len(tokenizer) <= tiny_llm.VOCAB_SIZE and tokenizer.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": "Why do partitions matter?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nWhy do partitions matter?<|im_end|>\n<|im_start|>assistant\n"
    text = "Ünïcode and bytes 🚀 survive"
    assert tokenizer.decode(tokenizer.encode(text)) == text, "byte-level: any text round-trips"

    assert (
        tiny_llm.make(first) == first
        and (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    ), "a model already made is kept"
