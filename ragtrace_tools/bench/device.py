"""`ragtrace bench-device`: the embedding and index stages in-process, on the best device there is.

Absolute numbers for the machine named in the results (a GPU's mean something; a shared CPU's less):
- embedding chunks/s of MiniLM (the bundled model) at several batch sizes, fp16 on CUDA;
- the same for a larger model configuration: XLM-RoBERTa large, the architecture of bge-m3 (24 layers,
  1024 wide). Its weights are randomly initialised (no model hub here), which costs exactly what trained
  weights cost: the throughput is the architecture's;
- exact top-10 search over the chunk vectors: FAISS on the GPU when its package has GPU support, else the
  torch fallback (one matrix product and top-k on the device), next to FAISS on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

from embedding.engine import EmbeddingEngine, model_path
from embedding.settings import BUNDLED_MODEL, EmbeddingSettings
from ragtrace_tools.bench.measure import console, new_results, write_results
from ragtrace_tools.evaluation import EvalSet

LARGE = XLMRobertaConfig(
    vocab_size=250_002,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    max_position_embeddings=8194,
)
TOP_K = 10


def _timed(call: Callable[[], Any], repeats: int = 1) -> float:
    """Seconds per call, the best of `repeats` (after one warm-up)."""
    call()
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def minilm(engine: EmbeddingEngine, texts: list[str], batch_sizes: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for batch_size in batch_sizes:
        engine.batch_size = batch_size
        seconds = _timed(lambda: engine.embed(texts))
        dtype = f"{engine.backend} {engine.dtype}"
        rows.append(_row("all-MiniLM-L6-v2", engine.device, dtype, batch_size, len(texts), seconds))
    return rows


def large_configuration(
    texts: list[str], device: str, batch_sizes: Sequence[int], config: XLMRobertaConfig = LARGE
) -> list[dict[str, Any]]:
    """Encoder forward passes and mean pooling of XLM-R large over the texts, as sentence-transformers does."""
    tokenizer = AutoTokenizer.from_pretrained(model_path(BUNDLED_MODEL))  # a real tokenizer; its ids fit the vocab
    half = device.startswith("cuda")
    model: Any = XLMRobertaModel(config)  # transformers' typing of .to() confuses mypy
    model = model.to(device).eval()
    if half:
        model = model.half()
    rows = []
    for batch_size in batch_sizes:

        def encode(batch_size: int = batch_size) -> None:
            with torch.inference_mode():
                for start in range(0, len(texts), batch_size):
                    tokens = tokenizer(
                        texts[start : start + batch_size],
                        padding=True,
                        truncation=True,
                        max_length=256,
                        return_tensors="pt",
                    ).to(device)
                    hidden = model(**tokens).last_hidden_state
                    mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1)
                    torch.nn.functional.normalize(pooled, dim=1).float().cpu()

        name = f"XLM-R config, {config.num_hidden_layers} layers x {config.hidden_size}"
        dtype = "float16" if half else "float32"
        rows.append(_row(name, device, dtype, batch_size, len(texts), _timed(encode)))
    return rows


def _row(model: str, device: str, dtype: str, batch_size: int, texts: int, seconds: float) -> dict[str, Any]:
    return {
        "model": model,
        "device": device,
        "dtype": dtype,
        "batch_size": batch_size,
        "texts": texts,
        "chunks_per_s": round(texts / seconds, 1),
    }


def index_search(vectors: np.ndarray, queries: np.ndarray, device: str) -> list[dict[str, Any]]:
    """Exact top-k by inner product (cosine on normalized vectors): queries/s per implementation."""
    rows = []
    cpu_index = faiss.IndexFlatIP(vectors.shape[1])
    cpu_index.add(vectors)
    implementations: dict[str, Callable[[], Any]] = {"faiss, cpu": lambda: cpu_index.search(queries, TOP_K)}
    if device.startswith("cuda"):
        if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            gpu_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu_index)
            implementations["faiss, gpu"] = lambda: gpu_index.search(queries, TOP_K)
        on_device = torch.from_numpy(vectors).to(device).half()
        query_tensor = torch.from_numpy(queries).to(device).half()
        implementations["torch fallback, gpu fp16"] = lambda: torch.topk(query_tensor @ on_device.T, TOP_K, dim=1)
    for name, search in implementations.items():
        seconds = _timed(search, repeats=3)
        rate = round(len(queries) / seconds)
        rows.append({"implementation": name, "vectors": len(vectors), "queries": len(queries), "queries_per_s": rate})
    return rows


def run(
    data: Path, passages: int | None, batch_sizes: Sequence[int] | None, large: bool | None, output_dir: Path
) -> dict[str, Any]:
    """Unset options follow the device: a GPU gets 5,000 passages, batches up to 1,024 and the large model."""
    engine = EmbeddingEngine(EmbeddingSettings())
    device = engine.device
    on_gpu = device.startswith("cuda")
    eval_set = EvalSet.load(data)
    texts = [passage["text"] for passage in eval_set.corpus.values()][: passages or (5000 if on_gpu else 500)]
    sizes = batch_sizes or ((64, 128, 256, 512, 1024) if on_gpu else (16, 32, 64))
    console.print(f"[bold]embedding[/] {len(texts)} passages on {device}")
    embedding = minilm(engine, texts, sizes)
    if on_gpu if large is None else large:
        embedding += large_configuration(texts, device, sizes)
    console.print("[bold]index search[/]")
    vectors = engine.embed(texts)
    queries = engine.embed(list(eval_set.queries.values()))
    repeats = max(1, 100_000 // len(vectors))  # a realistic index size: the vectors, repeated with noise
    rng = np.random.default_rng(0)
    index = np.vstack([vectors + rng.normal(0, 0.01, vectors.shape).astype(np.float32) for _ in range(repeats)])
    index /= np.linalg.norm(index, axis=1, keepdims=True)
    results = new_results(embedding=embedding, index_search=index_search(index.astype(np.float32), queries, device))
    _report(results, output_dir)
    return results


def _report(results: dict[str, Any], output_dir: Path) -> None:
    rows = [
        f"| embedding | {row['model']}, {row['device']} {row['dtype']}, batch {row['batch_size']}"
        f" | {row['chunks_per_s']} chunks/s |"
        for row in results["embedding"]
    ]
    rows += [
        f"| exact top-{TOP_K} search | {row['implementation']}, {row['vectors']} vectors"
        f" | {row['queries_per_s']} queries/s |"
        for row in results["index_search"]
    ]
    columns = ("stage", "configuration", "throughput")
    write_results(results, "ragtrace bench-device", columns, rows, output_dir, suffix="-device")
