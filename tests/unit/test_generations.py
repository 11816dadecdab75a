"""A namespace's generations on the embedded FAISS backend (ragtrace/vectorstore/generations.py): two stores on
one folder stand for two processes (the indexer and the search service)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtrace.errors import ModelMismatch
from ragtrace.vectorstore import DocumentChunks, IndexedChunk
from ragtrace.vectorstore.faiss_store import FaissStore
from ragtrace.vectorstore.generations import GenerationalStore, Generations

NAMESPACE = "docs"


def _document(document_id: str, model: str = "model-a", text: str = "cats and dogs") -> DocumentChunks:
    chunk = IndexedChunk(f"{document_id}:0", 0, f"{text} in {document_id}", 0, len(text), [1.0, 0.0])
    return DocumentChunks(document_id, {"title": document_id}, [chunk], model, f"hash-{document_id}-{text}")


@pytest.fixture
def stores(tmp_path: Path) -> tuple[GenerationalStore, GenerationalStore]:
    return GenerationalStore(FaissStore(tmp_path)), GenerationalStore(FaissStore(tmp_path))


def _served(store: GenerationalStore) -> set[str]:
    return {hit.document_id for hit in store.search(NAMESPACE, [1.0, 0.0], 100)}


def test_writes_meanwhile_reach_the_new_generation_and_the_switch_is_seen_at_once(
    stores: tuple[GenerationalStore, GenerationalStore], tmp_path: Path
) -> None:
    indexer, searcher = stores
    indexer.write(NAMESPACE, [_document("a"), _document("b"), _document("c")], [])
    assert _served(searcher) == {"a", "b", "c"}

    building = indexer.begin(NAMESPACE)
    assert building == indexer.begin(NAMESPACE) == 1, "one generation is built at a time"
    indexer.write_generation(NAMESPACE, building, [_document("a")])  # re-index events
    indexer.write(NAMESPACE, [_document("d"), _document("b", text="birds")], ["c"])  # owners' events meanwhile
    assert indexer.document_ids(NAMESPACE, building) == {"a", "b", "d"}
    assert _served(searcher) == {"a", "b", "d"}, "the serving generation is written to as before"

    assert indexer.switch(NAMESPACE, building)
    assert searcher.generations(NAMESPACE) == Generations(serving=1)
    assert _served(searcher) == {"a", "b", "d"}
    assert [h.document_id for h in searcher.keyword_search(NAMESPACE, "birds", 5)] == ["b"]
    assert sorted(p.name for p in tmp_path.glob("*.sqlite")) == ["docs_g1.sqlite"], "the old generation is dropped"
    assert indexer.switch(NAMESPACE, building), "again (after a crash): only the drop, done already"
    assert not indexer.write_generation(NAMESPACE, 7, [_document("e")]), "no such generation: nothing written"
    assert searcher.namespaces() == [NAMESPACE]


def test_a_write_racing_the_switch_leaves_no_dropped_generation_behind(
    stores: tuple[GenerationalStore, GenerationalStore], tmp_path: Path
) -> None:
    indexer, other = stores
    indexer.write(NAMESPACE, [_document("a")], [])
    other.write_generation(NAMESPACE, other.begin(NAMESPACE), [_document("a")])
    other.switch(NAMESPACE, 1)
    # The indexer had generation 0 open when another process switched: its next write finds the new one.
    indexer.write(NAMESPACE, [_document("b")], [])
    assert sorted(p.name for p in tmp_path.glob("*.sqlite")) == ["docs_g1.sqlite"]
    assert _served(other) == {"a", "b"}


def test_a_new_model_leaves_the_serving_generation_until_the_switch(
    stores: tuple[GenerationalStore, GenerationalStore],
) -> None:
    indexer, searcher = stores
    indexer.write(NAMESPACE, [_document("a"), _document("b")], [])
    with pytest.raises(ModelMismatch):
        indexer.write(NAMESPACE, [_document("c", model="model-b")], [])  # not while nothing is being built
    building = indexer.begin(NAMESPACE)
    indexer.write_generation(NAMESPACE, building, [_document("a", model="model-b")])
    indexer.write(NAMESPACE, [_document("b", model="model-b", text="birds")], [])
    assert _served(searcher) == {"a"}, "b's old version is stale, and its new one is another model's"
    assert _model(searcher) == "model-a"
    indexer.switch(NAMESPACE, building)
    assert _served(searcher) == {"a", "b"}
    assert _model(searcher) == "model-b"


def _model(store: GenerationalStore) -> str | None:
    model = store.embedding_model(NAMESPACE)
    return model.name if model else None
