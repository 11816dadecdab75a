"""Searches of one FAISS-backend namespace run side by side, and the namespace's writes reach them whole.

A search holds the namespace's in-memory indexes for reading: two searches are inside the index at the same
time (each waits at a barrier for the other; searches taken one at a time would break it), a change waits
for the searches in flight, and searches while the namespace is being rewritten always see the FAISS and the
keyword index at the same change (hybrid search reads the keyword matches' vectors from the FAISS index)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ragtrace.vectorstore import DocumentChunks, IndexedChunk
from ragtrace.vectorstore.faiss_store import FaissStore, ReadWriteLock
from ragtrace.vectorstore.keyword_index import KeywordIndex
from ragtrace_tools.synthetic import MODEL, SyntheticCorpus

NAMESPACE = "side-by-side"
CORPUS = SyntheticCorpus(dimension=32, latent_dimension=8, topics=16, vocabulary=500, words_per_chunk=20)
QUERIES = CORPUS.queries(8)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FaissStore]:
    store = FaissStore(tmp_path)
    for batch in CORPUS.batches(0, 1_000, 500):
        store.write(NAMESPACE, batch, [])
    yield store
    store.close()


def test_two_searches_are_inside_the_keyword_index_at_once(store: FaissStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.settle(NAMESPACE)
    both_inside = threading.Barrier(2, timeout=10)
    search = KeywordIndex.search

    def meeting(self: KeywordIndex, query: str, top_k: int) -> list[tuple[int, float]]:
        both_inside.wait()  # broken after 10 s if the other search cannot get in meanwhile
        return search(self, query, top_k)

    monkeypatch.setattr(KeywordIndex, "search", meeting)
    with ThreadPoolExecutor(2) as pool:
        keyword = pool.submit(store.keyword_search, NAMESPACE, QUERIES[0][0], 5)
        hybrid = pool.submit(store.hybrid_search, NAMESPACE, QUERIES[1][0], QUERIES[1][1].tolist(), 5, 0.7)
        assert len(keyword.result()) == 5
        assert len(hybrid.result()) == 5


def test_a_writer_waits_for_the_readers_in_flight() -> None:
    lock = ReadWriteLock()
    events: list[str] = []
    with lock.reading(), lock.reading():  # two readers at once
        writer = threading.Thread(target=lambda: _write(lock, events))
        writer.start()
        writer.join(timeout=0.3)
        assert writer.is_alive() and not events, "the writer got in while readers held the lock"
        events.append("readers done")
    writer.join(timeout=10)
    assert events == ["readers done", "written"]


def _write(lock: ReadWriteLock, events: list[str]) -> None:
    with lock.writing():
        events.append("written")


def moved(number: int, generation: int) -> DocumentChunks:
    """Document `number` rewritten: one chunk with a new vector and a word only this version holds."""
    vector = CORPUS.vectors(np.random.default_rng(generation * 1_000 + number), 1)[0]
    text = f"version{generation} rewritten"
    chunk = IndexedChunk(f"doc-{number}:0", 0, text, 0, len(text), [float(x) for x in vector])
    return DocumentChunks(f"doc-{number}", {"title": f"doc-{number}"}, [chunk], model=MODEL)


def test_searches_while_the_namespace_is_rewritten_see_both_indexes_at_one_change(store: FaissStore) -> None:
    store.settle(NAMESPACE)
    stop = threading.Event()
    failures: list[BaseException] = []

    def search_until_stopped(query: str, vector: list[float]) -> int:
        searches = 0
        while not stop.is_set():
            try:
                # "rewritten": matches only the documents rewritten so far, whose feedback vectors must be in
                # the FAISS index the search reads them from.
                store.hybrid_search(NAMESPACE, f"{query} rewritten", vector, 10, 0.7)
                store.search(NAMESPACE, vector, 10)
            except BaseException as error:  # every failure is reported below
                failures.append(error)
                return searches
            searches += 1
        return searches

    with ThreadPoolExecutor(3) as pool:
        searchers = [pool.submit(search_until_stopped, q, v.tolist()) for q, v in QUERIES[:3]]
        for generation in range(1, 21):
            rewritten = [moved(number, generation) for number in range(generation, generation + 10)]
            store.write(NAMESPACE, rewritten, [f"doc-{generation + 50}"])
        stop.set()
        counts = [searcher.result() for searcher in searchers]
    assert not failures, failures[:3]
    assert all(counts), counts
    newest = store.keyword_search(NAMESPACE, "version20", 20)
    assert {hit.document_id for hit in newest} == {f"doc-{n}" for n in range(20, 30)}
    assert store.count(NAMESPACE, "doc-55") == 0
