"""The FAISS store's switch from exact to approximate search (IVF) above its threshold, on a small synthetic
namespace in a temporary folder: recall against exact search, deletions and updates during and after the
switch, searches answering while the new index is built, and the saved index reloaded after a restart.
A rebuild is held at a gate where a test needs it in flight: nothing here depends on timing."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragtrace.vectorstore import DocumentChunks, IndexedChunk
from ragtrace.vectorstore import faiss_store as faiss_store_module
from ragtrace.vectorstore.faiss_index import IndexPolicy, NamespaceIndex, build
from ragtrace.vectorstore.faiss_store import FaissStore
from ragtrace_tools.synthetic import MODEL, SyntheticCorpus

NAMESPACE = "scale"
THRESHOLD = 2_000
BATCH = 500
CORPUS = SyntheticCorpus(dimension=32, latent_dimension=8, topics=16, vocabulary=2_000, words_per_chunk=20)


def fill(store: FaissStore, chunks: int, start: int = 0) -> None:
    for batch in CORPUS.batches(start, start + chunks, BATCH):
        store.write(NAMESPACE, batch, [])


def vector_of(document_id: str, chunk_no: int = 0) -> list[float]:
    number = int(document_id.removeprefix("doc-")) * 10 + chunk_no
    chunk = CORPUS.chunk_batch(number // BATCH, BATCH)[(number % BATCH) // 10].chunks[chunk_no]
    return [float(x) for x in chunk.vector]


def moved(document_id: str, seed: int) -> DocumentChunks:
    """The document rewritten as one chunk with a new vector of its own."""
    vector = CORPUS.vectors(np.random.default_rng(seed), 1)[0]
    chunk = IndexedChunk(f"{document_id}:0", 0, "rewritten", 0, 9, [float(x) for x in vector])
    return DocumentChunks(document_id, {"title": document_id}, [chunk], model=MODEL)


def top_documents(store: FaissStore, vector: Sequence[float], top_k: int = 10) -> list[str]:
    return [hit.document_id for hit in store.search(NAMESPACE, vector, top_k)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FaissStore]:
    store = FaissStore(tmp_path, policy=IndexPolicy(approximate_above=THRESHOLD))
    yield store
    store.close()


class Gate:
    """Holds every approximate build until opened, and counts the builds that ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, opened: bool = False) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.approximate_builds = 0
        if opened:
            self.open.set()

        def held_build(ids: np.ndarray, vectors: np.ndarray, cells: int, *args: Any) -> NamespaceIndex:
            if cells:
                self.approximate_builds += 1
                self.entered.set()
                self.open.wait()
            return build(ids, vectors, cells, *args)

        monkeypatch.setattr(faiss_store_module, "build", held_build)


def test_policy_switches_above_the_threshold_and_rebuilds_only_when_the_size_changes_twofold() -> None:
    policy = IndexPolicy(approximate_above=10_000)
    assert policy.rebuild_cells(9_999, 0) is None
    assert policy.rebuild_cells(10_000, 0) == 100
    assert policy.rebuild_cells(30_000, 100) is None, "√N within twice the cells: keep them"
    assert policy.rebuild_cells(40_000, 100) is None
    assert policy.rebuild_cells(40_401, 100) == 201
    assert policy.rebuild_cells(6_000, 100) is None, "between half the threshold and the threshold: keep"
    assert policy.rebuild_cells(4_999, 100) == 0, "below half the threshold: exact again"


def test_the_namespace_switches_to_approximate_above_the_threshold_with_the_recall_asked(store: FaissStore) -> None:
    fill(store, THRESHOLD - BATCH)
    assert store.settle(NAMESPACE).kind == "exact"
    fill(store, 2 * BATCH, start=THRESHOLD - BATCH)
    info = store.settle(NAMESPACE)
    assert info.kind == "approximate" and info.size == THRESHOLD + BATCH
    assert info.cells == round((THRESHOLD + BATCH) ** 0.5)
    assert info.recall is not None and info.recall >= 0.95
    assert 1 <= info.nprobe <= info.cells


def test_recall_at_10_against_exact_search_on_other_queries(tmp_path: Path) -> None:
    approximate = FaissStore(tmp_path / "approximate", policy=IndexPolicy(approximate_above=THRESHOLD))
    exact = FaissStore(tmp_path / "exact", policy=IndexPolicy(approximate_above=10**9))
    for store in (approximate, exact):
        for batch in CORPUS.batches(0, 4 * THRESHOLD, BATCH):
            store.write(NAMESPACE, batch, [])
    assert approximate.settle(NAMESPACE).kind == "approximate" and exact.settle(NAMESPACE).kind == "exact"
    found = truth = 0
    for _, vector in CORPUS.queries(200, seed=7):
        expected = {hit.chunk_id for hit in exact.search(NAMESPACE, vector.tolist(), 10)}
        found += len(expected & {hit.chunk_id for hit in approximate.search(NAMESPACE, vector.tolist(), 10)})
        truth += len(expected)
    assert found / truth >= 0.95
    approximate.close()
    exact.close()


def test_deletions_and_updates_after_the_switch(store: FaissStore) -> None:
    fill(store, THRESHOLD + BATCH)
    assert store.settle(NAMESPACE).kind == "approximate"
    old = vector_of("doc-3")
    assert top_documents(store, vector_of("doc-7"))[0] == "doc-7"
    store.write(NAMESPACE, [moved("doc-3", seed=11)], ["doc-7"])
    assert "doc-7" not in top_documents(store, vector_of("doc-7"), 50)
    assert top_documents(store, moved("doc-3", seed=11).chunks[0].vector)[0] == "doc-3"
    assert "doc-3" not in top_documents(store, old)[:1], "its old vector is gone"
    assert store.count(NAMESPACE) == THRESHOLD + BATCH - 19


def test_searches_answer_and_writes_are_kept_while_the_new_index_is_built(
    store: FaissStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    fill(store, THRESHOLD + BATCH)
    assert top_documents(store, vector_of("doc-5"))[0] == "doc-5"  # this search starts the rebuild
    assert gate.entered.wait(timeout=30)
    # Held mid-build: searches go on with the exact index and see writes at once.
    store.write(NAMESPACE, [moved("doc-9", seed=5)], ["doc-5"])
    fill(store, BATCH, start=THRESHOLD + BATCH)
    assert "doc-5" not in top_documents(store, vector_of("doc-5"), 50)
    assert top_documents(store, vector_of("doc-250"))[0] == "doc-250"
    hybrid = store.hybrid_search(NAMESPACE, "anything", vector_of("doc-251"), 5, 0.7)
    assert len(hybrid) == 5
    gate.open.set()
    info = store.settle(NAMESPACE)
    # The writes made during the build were replayed onto the new index before it was swapped in.
    assert info.kind == "approximate" and info.size == THRESHOLD + 2 * BATCH - 19
    assert "doc-5" not in top_documents(store, vector_of("doc-5"), 50)
    assert top_documents(store, moved("doc-9", seed=5).chunks[0].vector)[0] == "doc-9"
    assert top_documents(store, vector_of("doc-250"))[0] == "doc-250"


def test_the_saved_index_is_reloaded_after_a_restart_with_the_writes_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = IndexPolicy(approximate_above=THRESHOLD)
    first = FaissStore(tmp_path, policy=policy)
    fill(first, THRESHOLD + BATCH)
    built = first.settle(NAMESPACE)
    first.close()
    writer = FaissStore(tmp_path, policy=policy)  # another process's writes while no searcher runs
    writer.write(NAMESPACE, [], ["doc-1"])
    writer.close()

    gate = Gate(monkeypatch, opened=True)
    restarted = FaissStore(tmp_path, policy=policy)
    info = restarted.settle(NAMESPACE)
    assert gate.approximate_builds == 0, "loaded, not trained again"
    assert (info.kind, info.cells, info.nprobe) == ("approximate", built.cells, built.nprobe)
    assert info.size == THRESHOLD + BATCH - 10
    assert "doc-1" not in top_documents(restarted, vector_of("doc-1"), 50)
    assert top_documents(restarted, vector_of("doc-2"))[0] == "doc-2"
    restarted.close()


def test_a_saved_index_of_an_earlier_namespace_of_the_same_name_is_not_used(tmp_path: Path) -> None:
    policy = IndexPolicy(approximate_above=THRESHOLD)
    first = FaissStore(tmp_path, policy=policy)
    fill(first, THRESHOLD + BATCH)
    assert first.settle(NAMESPACE).kind == "approximate"
    first.close()
    for leftover in tmp_path.glob(f"{NAMESPACE}.sqlite*"):
        leftover.unlink()  # the namespace deleted, then written again, smaller
    again = FaissStore(tmp_path, policy=policy)
    fill(again, BATCH)
    info = again.settle(NAMESPACE)
    assert (info.kind, info.size) == ("exact", BATCH)
    assert top_documents(again, vector_of("doc-3"))[0] == "doc-3"
    assert not (tmp_path / f"{NAMESPACE}.ivf.npz").exists()
    again.close()
