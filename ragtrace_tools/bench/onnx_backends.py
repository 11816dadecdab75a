"""`ragtrace bench-onnx`: the embedding backends on this CPU, speed and quality, in one run.

For torch fp32 (sentence-transformers' `encode`, the reference) and each ONNX variant (embedding/onnx_backend.py,
plus the int8 candidates below that were tried for the default):
- chunks/s on the first N passages of a set at batch 32 (best of R interleaved rounds, after a warm-up, so a
  busy machine slows every variant alike), and a batch-size sweep for torch and the named fp32 backends (int8
  runs each text alone);
- cosine of each variant's vectors to torch fp32's on those passages (mean and minimum);
- dense-only nDCG@10 (exact search over whole documents, as `ragtrace eval`'s dense baseline) on every set.
A variant qualifies as the CPU default only if its nDCG@10 is within 0.005 of torch fp32 on every set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from embedding.engine import model_path
from embedding.onnx_backend import INTEGER_OPS, VARIANTS, OnnxEncoder, Variant, ensure_exported
from embedding.settings import BUNDLED_MODEL, EmbeddingSettings
from ragtrace_tools.bench.measure import console, new_results, write_results
from ragtrace_tools.evaluation import EvalSet, dense_baseline, eval_folders, mean_ndcg

QUALITY_BOUND = 0.005
SPEED_BATCH = 32
SWEEP = (8, 16, 32, 64, 128)
FFN_OUTPUT = r"layer\.\d+/output/dense/MatMul$"  # the feed-forward's output projection of each layer
# The int8 configurations tried besides the named ones (VARIANTS).
CANDIDATES = (
    # onnx-int8 is optimum's avx512_vnni defaults (every integer operator, per channel); these were tried too.
    Variant("int8-all-ops-no-ffn-output", quantize=True, per_channel=True, operators=INTEGER_OPS, exclude=FFN_OUTPUT),
    Variant("int8-matmul-per-tensor", quantize=True, per_channel=False),
    Variant("int8-matmul-per-channel", quantize=True, per_channel=True),
    Variant("int8-matmul-no-ffn-output", quantize=True, per_channel=True, exclude=FFN_OUTPUT),
    Variant(
        "int8-matmul-no-output-projections",
        quantize=True,
        per_channel=True,
        exclude=r"/output/dense/MatMul$",  # attention's and the feed-forward's
    ),
    Variant(
        "int8-fused-per-channel", optimize=True, quantize=True, per_channel=True, operators=("MatMul", "Attention")
    ),
)

Embed = Callable[[list[str], int], np.ndarray]


def _embed_batched(embed: Embed, texts: list[str]) -> np.ndarray:
    return embed(texts, SPEED_BATCH)


def _rate(embed: Embed, texts: list[str], batch_size: int) -> float:
    return _rates(embed, texts, batch_size)[0]


def _rates(embed: Embed, texts: list[str], batch_size: int) -> tuple[float, float]:
    """Chunks per wall second, and per CPU second of this process (all its threads): on a machine shared with
    other work the second is the steadier, with one thread (spinning threads count their spin)."""
    started, cpu = time.perf_counter(), time.process_time()
    embed(texts, batch_size)
    return len(texts) / (time.perf_counter() - started), len(texts) / (time.process_time() - cpu)


def run(
    data: Path,
    passages: int,
    rounds: int,
    names: Sequence[str] | None,
    cache_dir: Path | None,
    output_dir: Path,
    threads: int = 0,
    quality: bool = True,
) -> dict[str, Any]:
    """threads: onnxruntime's and torch's intra-op threads (0: the setting's, and torch's default)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    settings = EmbeddingSettings()
    if threads:
        settings = settings.model_copy(update={"onnx_threads": threads})
        torch.set_num_threads(threads)
    cache = cache_dir or settings.onnx_cache_dir
    path = model_path(BUNDLED_MODEL)
    model = SentenceTransformer(path, device="cpu")
    max_length = model.max_seq_length or 256

    def torch_embed(texts: list[str], batch_size: int) -> np.ndarray:
        with torch.inference_mode():
            vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    variants = [v for v in (*VARIANTS.values(), *CANDIDATES) if names is None or v.name in names]
    embedders: dict[str, Embed] = {"torch fp32": torch_embed}
    for variant in variants:
        console.print(f"export {variant.name}")
        encoder = OnnxEncoder(
            ensure_exported(model, cache, path, BUNDLED_MODEL, variant),
            model.tokenizer,
            max_length,
            threads=settings.onnx_threads,
            spinning=settings.onnx_spinning,  # as the engine runs it
            texts_alone=variant.quantize,  # as the engine runs it
        )
        embedders[variant.name] = encoder.encode

    folders = eval_folders(data)
    speed_set = EvalSet.load(next(f for f in folders if "msmarco" in f.name) if len(folders) > 1 else folders[0])
    texts = [speed_set.text(i) for i in list(speed_set.corpus)[:passages]]
    console.print(f"[bold]speed[/]: {len(texts)} passages of {speed_set.name}, batch {SPEED_BATCH}, {rounds} rounds")
    for embed in embedders.values():
        embed(texts[:64], SPEED_BATCH)  # warm-up
    rates: dict[str, float] = dict.fromkeys(embedders, 0.0)
    cpu_rates: dict[str, float] = dict.fromkeys(embedders, 0.0)
    for round_no in range(rounds):
        for name, embed in embedders.items():
            wall, cpu = _rates(embed, texts, SPEED_BATCH)
            rates[name], cpu_rates[name] = max(rates[name], wall), max(cpu_rates[name], cpu)
            console.print(f"  round {round_no + 1} {name}: {wall:.1f} chunks/s, {cpu:.1f} per CPU-second")
    sweep = {
        name: {size: round(_rate(embedders[name], texts, size), 1) for size in SWEEP}
        for name in ("torch fp32", *(n for n, v in VARIANTS.items() if not v.quantize))  # int8 runs texts alone
        if name in embedders
    }
    console.print(f"  batch sizes: {sweep}")

    reference = torch_embed(texts, SPEED_BATCH)
    rows: dict[str, dict[str, Any]] = {}
    for name, embed in embedders.items():
        cosine = np.sum(embed(texts, SPEED_BATCH) * reference, axis=1)
        rows[name] = {
            "variant": name,
            "chunks_per_s": round(rates[name], 1),
            "speed_over_torch": round(rates[name] / rates["torch fp32"], 2),
            "chunks_per_cpu_s": round(cpu_rates[name], 1),
            "cpu_speed_over_torch": round(cpu_rates[name] / cpu_rates["torch fp32"], 2),
            "cosine_mean": round(float(cosine.mean()), 5),
            "cosine_min": round(float(cosine.min()), 5),
            "ndcg_at_10": {},
        }
    for folder in folders if quality else []:
        eval_set = EvalSet.load(folder)
        for name, embed in embedders.items():
            started = time.perf_counter()
            ranking = dense_baseline(eval_set, partial(_embed_batched, embed))
            rows[name]["ndcg_at_10"][eval_set.name] = round(mean_ndcg(ranking, eval_set.qrels), 4)
            console.print(
                f"  {eval_set.name} {name}: nDCG@10 {rows[name]['ndcg_at_10'][eval_set.name]:.4f}"
                f" ({time.perf_counter() - started:.0f} s)"
            )
    for row in rows.values():
        scores, reference_scores = row["ndcg_at_10"], rows["torch fp32"]["ndcg_at_10"]
        row["within_bound"] = bool(scores) and all(
            abs(scores[s] - reference_scores[s]) <= QUALITY_BOUND for s in reference_scores
        )
    results = new_results(
        threads=threads or f"onnxruntime {settings.onnx_threads or 'cores of the process'}, torch default",
        passages=len(texts),
        speed_set=speed_set.name,
        batch_size=SPEED_BATCH,
        rounds=rounds,
        variants={v.name: asdict(v) for v in variants},
        backends=list(rows.values()),
        batch_sweep_chunks_per_s=sweep,
        quality_bound=QUALITY_BOUND,
    )
    _report(results, [f.name for f in folders] if quality else [], output_dir)
    return results


def _report(results: dict[str, Any], sets: list[str], output_dir: Path) -> None:
    rows = []
    for row in results["backends"]:
        cells = [
            row["variant"],
            str(row["chunks_per_s"]),
            f"{row['speed_over_torch']}x",
            str(row["chunks_per_cpu_s"]),
            f"{row['cpu_speed_over_torch']}x",
            f"{row['cosine_mean']:.4f} / {row['cosine_min']:.4f}",
            *(f"{row['ndcg_at_10'][s]:.4f}" if s in row["ndcg_at_10"] else "-" for s in sets),
        ]
        if sets:
            cells.append("yes" if row["within_bound"] else "no")
        rows.append("| " + " | ".join(cells) + " |")
    columns = (
        "backend",
        f"chunks/s (batch {results['batch_size']})",
        "speed / torch fp32",
        "chunks per CPU-second",
        "CPU efficiency / torch fp32",
        "cosine to torch fp32 (mean / min)",
        *(f"nDCG@10 {s}" for s in sets),
        *([f"within {QUALITY_BOUND} of torch fp32"] if sets else []),
    )
    write_results(results, "ragtrace bench-onnx", columns, rows, output_dir, suffix="-onnx")
