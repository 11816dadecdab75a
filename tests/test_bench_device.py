"""`ragtrace bench-device` in miniature on this machine's device: every stage runs and reports (no timings
asserted; the numbers belong to `make bench-device`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from transformers import XLMRobertaConfig

from embedding.engine import EmbeddingEngine
from ragtrace_tools.bench.device import _report, index_search, large_configuration, minilm

TEXTS = [f"Passage {i}: glaciers carve valleys while honeybees dance." for i in range(12)]


def test_each_stage_reports_its_throughput(engine: EmbeddingEngine, tmp_path: Path) -> None:
    embedding = minilm(engine, TEXTS, [4, 8])
    assert [row["batch_size"] for row in embedding] == [4, 8]
    assert all(row["model"] == "all-MiniLM-L6-v2" and row["chunks_per_s"] > 0 for row in embedding)

    tiny = XLMRobertaConfig(
        vocab_size=250_002, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    [large] = large_configuration(TEXTS, engine.device, [6], config=tiny)
    assert large["model"] == "XLM-R config, 2 layers x 32" and large["texts"] == len(TEXTS)

    vectors = engine.embed(TEXTS)
    [search] = index_search(vectors, vectors[:3], engine.device)
    assert search["implementation"] == "faiss, cpu" and search["queries_per_s"] > 0

    results = {
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {"cpu": "test", "gpu": "none"},
        "embedding": [*embedding, large],
        "index_search": [search],
    }
    _report(results, tmp_path)
    [written] = tmp_path.glob("*-device.json")
    assert json.loads(written.read_text())["embedding"][2]["model"].startswith("XLM-R")
    markdown = written.with_suffix(".md").read_text()
    assert "Machine: cpu test, gpu none" in markdown and "queries/s" in markdown
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
