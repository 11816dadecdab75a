"""The FAISS store keeps each document's provenance beside its chunks (in a temporary folder here): every
search mode returns it, a re-index replaces it, a deletion removes it, and a document indexed before
provenance was kept reads as empty rather than failing. The same over Weaviate: tests/integration/test_provenance.py."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from ragtrace.vectorstore import Provenance
from ragtrace.vectorstore.faiss_store import FaissStore
from tests.unit.search_fakes import DIMENSION, document, unit

NAMESPACE = "team-a"
FIRST = Provenance("a" * 32, "b" * 16, "2026-12-02T06:00:00+00:00", "test-model", "0.1.0")


@pytest.fixture
def store(tmp_path: Path) -> FaissStore:
    store = FaissStore(tmp_path)
    store.write(NAMESPACE, [dataclasses.replace(document("bread", "Sourdough bread rises."), provenance=FIRST)], [])
    return store


def _searches(store: FaissStore) -> dict[str, Provenance]:
    vector = unit(*([1.0] * DIMENSION))
    found = {
        "vector": store.search(NAMESPACE, vector, 5),
        "keyword": store.keyword_search(NAMESPACE, "sourdough", 5),
        "hybrid": store.hybrid_search(NAMESPACE, "sourdough", vector, 5, 0.7),
    }
    return {mode: hits[0].provenance for mode, hits in found.items() if hits}


def test_every_search_mode_returns_the_documents_provenance(store: FaissStore) -> None:
    assert _searches(store) == {"vector": FIRST, "keyword": FIRST, "hybrid": FIRST}


def test_a_reindex_replaces_the_provenance_and_a_deletion_removes_it(store: FaissStore, tmp_path: Path) -> None:
    second = dataclasses.replace(FIRST, trace_id="c" * 32, indexed_at="2026-12-02T07:00:00+00:00")
    store.write(NAMESPACE, [dataclasses.replace(document("bread", "Sourdough bread rises."), provenance=second)], [])
    assert _searches(store) == {"vector": second, "keyword": second, "hybrid": second}
    store.write(NAMESPACE, [], ["bread"])
    with sqlite3.connect(tmp_path / f"{NAMESPACE}.sqlite") as db:
        assert db.execute("SELECT count(*) FROM provenance").fetchone() == (0,)


def test_a_document_indexed_before_provenance_was_kept_has_an_empty_one(store: FaissStore, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / f"{NAMESPACE}.sqlite") as db:
        db.execute("DELETE FROM provenance")
    assert _searches(store) == {"vector": Provenance(), "keyword": Provenance(), "hybrid": Provenance()}
