"""The tiny chat model vLLM serves in the local stack and the tests: no weights can be downloaded here, so the
project makes one. A byte-level BPE tokenizer trained on the bundled load-generation corpus, a ChatML chat
template, and a 2-layer Llama with random bf16 weights (fixed seed): its answers are noise, but it goes through
every step a real model does (tokenize, prefill, decode, stream, usage, metrics, spans).

`make install` runs `ragtrace llm-model`; a model already made is left alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ragtrace_tools.devstack.servers import REPO_ROOT, cache_dir

CORPUS = REPO_ROOT / "ragtrace_tools" / "loadgen" / "corpus.jsonl"
# Bump when the recipe below changes: a new directory, so a model made by an older recipe is never reused.
RECIPE = "v1"
SEED = 15
VOCAB_SIZE = 1024
# As long as the Kind overlay's --max-model-len, so the local server takes the same argument.
MAX_POSITIONS = 8192
PAD, TURN_START, TURN_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"  # ChatML's; a turn's end is EOS
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def model_dir() -> Path:
    return cache_dir() / f"tiny-llm-{RECIPE}"


def _corpus_texts() -> list[str]:
    lines = CORPUS.read_text().splitlines()
    return [f"{doc['title']}\n{doc['text']}" for doc in map(json.loads, filter(None, lines))]


def _save_tokenizer(into: Path) -> int:
    """Train the tokenizer and save it with its chat template; returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, TURN_START, TURN_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, so any text can be encoded
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=TURN_END, pad_token=PAD, bos_token=None)  # type: ignore[no-untyped-call]
    fast.chat_template = CHATML
    fast.save_pretrained(into)
    return int(tokenizer.get_vocab_size())


def _save_model(into: Path, vocab_size: int, eos_token_id: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        dtype="bfloat16",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).bfloat16()
    model.save_pretrained(into, safe_serialization=True)


def make(into: Path) -> Path:
    """The model in `into`, made unless it is already there (written aside, then moved into place)."""
    if (into / "config.json").exists():
        return into
    into.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into.parent, prefix=f".{into.name}.") as scratch:
        work = Path(scratch) / "model"
        vocab_size = _save_tokenizer(work)
        eos = json.loads((work / "tokenizer.json").read_text())["model"]["vocab"][TURN_END]
        _save_model(work, vocab_size, eos)
        shutil.rmtree(into, ignore_errors=True)
        work.rename(into)
    return into
