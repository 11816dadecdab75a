"""`make bench`'s bare search (issue 28): ragtrace's own query encoder and store called in one process, at each
concurrency the stack is measured at, with the CPU each request took: the stack's ratios are against it."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from embedding.engine import EmbeddingEngine
from embedding.settings import EmbeddingSettings
from ragtrace.vectorstore import DocumentChunks, IndexedChunk
from ragtrace.vectorstore.faiss_store import FaissStore
from ragtrace_tools.bench.stack import at_best_batch, bare_embedding, bare_search, cpu_budget, median_run

NAMESPACE = "bare"
PASSAGES = {
    "kafka": "Kafka partitions order the events of one key.",
    "minio": "MinIO buckets hold the documents as objects.",
    "redis": "Redis caches search results for a few minutes.",
}
QUERIES = ["kafka partitions", "buckets of objects", "redis caches"]


@pytest.fixture(scope="module")
def engine() -> EmbeddingEngine:
    return EmbeddingEngine(EmbeddingSettings(), serves_queries=True)


@pytest.fixture
def index_dir(tmp_path: Path, engine: EmbeddingEngine) -> Path:
    vectors = engine.embed(list(PASSAGES.values())).tolist()
    store = FaissStore(tmp_path)
    store.write(
        NAMESPACE,
        [
            DocumentChunks(name, {"title": name}, [IndexedChunk(f"{name}:0", 0, text, 0, len(text), vector)])
            for (name, text), vector in zip(PASSAGES.items(), vectors, strict=True)
        ],
        [],
    )
    store.close()
    return tmp_path


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_the_bare_search_answers_every_request_at_each_concurrency(
    mode: str, engine: EmbeddingEngine, index_dir: Path
) -> None:
    rows = bare_search(engine, index_dir, NAMESPACE, QUERIES, mode, requests=40, concurrencies=(1, 3))

    assert [(row["mode"], row["concurrency"]) for row in rows] == [(mode, 1), (mode, 3)]
    for row in rows:
        # Each query keeps a word of a passage (the bench adds one unique word to every query): all find one.
        assert row["answered"] == row["requests"] == 40, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
        if mode != "keyword":  # 40 encodings are well above the sampler's 0.1 s resolution; 40 BM25 lookups not
            assert row["cpu_ms_per_request"] > 0, row


def test_the_indexing_budget_sets_what_the_run_spent_per_chunk_against_what_the_targets_allow(
    engine: EmbeddingEngine,
) -> None:
    """The engine's own CPU per chunk is the model's share; at 1.5x the bare model's rate the machine's cores give
    each chunk cores / rate seconds, and the pipeline's processes are charged per chunk."""
    rows = bare_embedding(engine, [f"{text} {n}" for n in range(30) for text in PASSAGES.values()])
    assert [row["batch_size"] for row in rows] == [1], rows  # int8 runs each text alone: nothing to choose
    engine_row = at_best_batch([rows])
    assert engine_row["cpu_ms_per_chunk"] > 0, engine_row
    indexing = {"bare_model": {"chunks_per_s": 40.0}, "bare_engine": engine_row}

    machine = {"busy": 30.0, "idle": 8.0, "steal": 2.0}
    budget = cpu_budget(indexing, 500, {"embedding-worker": 15.0, "minio": 4.0, "redis": 0.0}, machine)

    cores = psutil.cpu_count() or 1
    assert budget["pipeline_ms_per_chunk"] == {"embedding-worker": 30.0, "minio": 8.0}
    assert budget["pipeline_ms_per_chunk_total"] == 38.0
    assert budget["model_ms_per_chunk"] == engine_row["cpu_ms_per_chunk"]
    assert budget["allowed_ms_per_chunk_at_1_5x_bare_model"] == round(cores * 1000 / 60.0, 1)
    assert budget["allowed_ms_per_chunk_at_0_6_of_engine"] == round(
        cores * 1000 / (0.6 * engine_row["chunks_per_s"]), 1
    )
    # 19 of the machine's 40 core-seconds were the stack's processes', 30 were busy in all.
    assert budget["machine_share"] == {"stack": 0.475, "busy": 0.75, "idle": 0.2, "steal": 0.05}


def test_each_side_is_taken_at_its_median_round_and_the_bare_model_at_its_best_batch_by_median() -> None:
    """One lucky round does not make a batch size the best, nor set a side's rate: batch 16 has the single
    fastest round, batch 32 the higher median."""
    rounds = [
        [{"batch_size": 16, "chunks_per_s": 60.0}, {"batch_size": 32, "chunks_per_s": 45.0}],
        [{"batch_size": 16, "chunks_per_s": 35.0}, {"batch_size": 32, "chunks_per_s": 49.0}],
        [{"batch_size": 16, "chunks_per_s": 38.0}, {"batch_size": 32, "chunks_per_s": 41.0}],
    ]

    best = at_best_batch(rounds)

    assert best == {"batch_size": 32, "chunks_per_s": 45.0, "rounds_chunks_per_s": [45.0, 49.0, 41.0]}
    runs = [{"namespace": name, "chunks_per_s": rate} for name, rate in (("a", 80.0), ("b", 70.0), ("c", 90.0))]
    assert median_run(runs) == {"namespace": "a", "chunks_per_s": 80.0, "rounds_chunks_per_s": [80.0, 70.0, 90.0]}
