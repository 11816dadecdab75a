"""The embedded backend's keyword index (ragtrace/vectorstore/keyword_index.py): BM25 over Tantivy, kept in step
with the namespace's change log. Two stores on one folder stand for two processes (the indexer and the search
service)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ragtrace.vectorstore import DocumentChunks, IndexedChunk
from ragtrace.vectorstore.faiss_index import latest_change
from ragtrace.vectorstore.faiss_store import FaissStore
from ragtrace.vectorstore.keyword_index import KeywordIndex

NAMESPACE = "docs"

TEXTS = {
    "tides": "The moon pulls the oceans and the tides follow it twice a day.",
    "birds": "Migrating birds follow the coast south in autumn.",
    "bread": "Sourdough starter: flour with water, left standing.",
    "ferry": "The harbour ferry leaves on time when the tide is high.",
}


def _document(document_id: str, text: str, title: str = "") -> DocumentChunks:
    chunk = IndexedChunk(f"{document_id}:0", 0, text, 0, len(text), [1.0, 0.0])
    return DocumentChunks(document_id, {"title": title or document_id}, [chunk], "model-a", f"hash-{text}")


@pytest.fixture
def stores(tmp_path: Path) -> tuple[FaissStore, FaissStore]:
    indexer, searcher = FaissStore(tmp_path), FaissStore(tmp_path)
    indexer.write(NAMESPACE, [_document(i, text) for i, text in TEXTS.items()], [])
    return indexer, searcher


def _found(store: FaissStore, query: str) -> list[str]:
    return [hit.document_id for hit in store.keyword_search(NAMESPACE, query, 10)]


def test_bm25_ranks_the_chunks_holding_the_rarer_words_first_and_matches_word_forms(
    stores: tuple[FaissStore, FaissStore],
) -> None:
    _, searcher = stores
    hits = searcher.keyword_search(NAMESPACE, "tide ferry", 10)
    assert [h.document_id for h in hits] == ["ferry", "tides"], "ferry holds both words; 'tides' stems to 'tide'"
    assert hits[0].score > hits[1].score > 0
    assert _found(searcher, "migration bird") == ["birds"], "stemmed: migrating / migration, birds / bird"
    assert _found(searcher, "BREAD") == ["bread"], "the title is searched too, whatever the case"


def test_accents_are_folded_in_the_text_and_in_the_query(tmp_path: Path) -> None:
    """Names are written with and without their accents: FTS5's unicode61 folded them, and so does this index."""
    store = FaissStore(tmp_path)
    store.write(
        NAMESPACE,
        [_document("zurich", "Zürich's café by the Limmat.", "Zürich"), _document("ferry", TEXTS["ferry"])],
        [],
    )
    assert [hit.document_id for hit in store.keyword_search(NAMESPACE, "zurich cafe", 10)] == ["zurich"]
    assert [hit.document_id for hit in store.keyword_search(NAMESPACE, "Zürich", 10)] == ["zurich"]


@pytest.mark.parametrize(
    "query",
    ['title:moon AND (oceans OR "x', "moon^3 -oceans* ~2", "moon) OR [b TO z]", "moon_pulls", "moon\\ {}:!"],
)
def test_the_users_text_is_read_as_words_never_as_query_syntax(
    stores: tuple[FaissStore, FaissStore], query: str
) -> None:
    _, searcher = stores
    assert _found(searcher, query) == ["tides"]


def test_a_word_in_more_than_half_the_chunks_weighs_next_to_nothing(stores: tuple[FaissStore, FaissStore]) -> None:
    """BM25's Robertson-Sparck Jones IDF, as FTS5 had it: 'the' is in 3 of 4 chunks, no evidence of relevance."""
    _, searcher = stores
    bread, *others = searcher.keyword_search(NAMESPACE, "the sourdough", 10)
    assert bread.document_id == "bread"
    assert sorted(hit.document_id for hit in others) == ["birds", "ferry", "tides"]
    assert all(0 < hit.score < bread.score * 1e-3 for hit in others)
    assert sorted(_found(searcher, "the")) == ["birds", "ferry", "tides"], "alone, it still finds its chunks"


def test_a_query_without_words_finds_nothing(stores: tuple[FaissStore, FaissStore]) -> None:
    _, searcher = stores
    assert _found(searcher, " ?! -- ") == []
    assert searcher.keyword_search(NAMESPACE, "moon", 0) == []


def test_another_process_s_writes_updates_and_deletes_are_seen_by_the_next_search(
    stores: tuple[FaissStore, FaissStore],
) -> None:
    indexer, searcher = stores
    assert _found(searcher, "flour") == ["bread"]
    indexer.write(NAMESPACE, [_document("bread", "Rye bread needs a longer proof."), _document("lamp", "lamp")], [])
    indexer.write(NAMESPACE, [], ["birds"])
    assert _found(searcher, "flour") == [], "the old version's words are gone"
    assert _found(searcher, "rye proof") == ["bread"]
    assert _found(searcher, "coast birds") == []
    assert _found(searcher, "lamp") == ["lamp"]
    assert searcher.count(NAMESPACE) == indexer.count(NAMESPACE) == 4


def test_replaying_changes_already_applied_changes_nothing(tmp_path: Path) -> None:
    store = FaissStore(tmp_path)
    store.write(NAMESPACE, [_document(i, text) for i, text in TEXTS.items()], [])
    store.write(NAMESPACE, [_document("tides", "Spring tides come with the new moon.")], ["birds"])
    db = sqlite3.connect(tmp_path / f"{NAMESPACE}.sqlite")
    index = KeywordIndex.build(db, latest_change(db))
    once = index.search("moon harbour", 10)
    index.seq = 0  # as an index built from a snapshot replays the writes since
    index.apply_changes(db, latest_change(db))
    assert index.search("moon harbour", 10) == once
    assert len(once) == 2, "one hit per chunk: nothing was added twice"


def test_a_namespace_written_with_the_fts5_keyword_table_is_searched_through_the_new_index(tmp_path: Path) -> None:
    """Namespaces written before the move to Tantivy hold an FTS5 copy of every chunk and the triggers that
    kept it: opening one drops both, and its rows are indexed as they are."""
    FaissStore(tmp_path).write(NAMESPACE, [_document(i, text) for i, text in TEXTS.items()], [])
    with sqlite3.connect(tmp_path / f"{NAMESPACE}.sqlite") as old:
        old.executescript(
            "CREATE VIRTUAL TABLE chunks_fts USING fts5(content, title, content='chunks', content_rowid='id');"
            "CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN"
            " INSERT INTO chunks_fts(rowid, content, title) VALUES (new.id, new.content, new.title); END;"
        )
    reopened = FaissStore(tmp_path)
    assert _found(reopened, "sourdough") == ["bread"]
    reopened.write(NAMESPACE, [_document("kiln", "A kiln fires the clay.")], [])
    assert _found(reopened, "kiln") == ["kiln"]
    with sqlite3.connect(tmp_path / f"{NAMESPACE}.sqlite") as db:
        left = db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'chunks_fts%'").fetchall()
    assert left == []


def test_deleted_chunks_still_counted_by_the_index_break_no_search(tmp_path: Path) -> None:
    """Tantivy counts a deleted chunk in a word's document frequency until its segment is merged, so a word
    can seem to be in more chunks than the namespace holds."""
    store = FaissStore(tmp_path)
    store.write(NAMESPACE, [_document(f"moon-{i}", "The moon and its phases.") for i in range(3)], [])
    store.write(NAMESPACE, [_document("kiln", "A kiln fires the clay.")], [])
    assert len(_found(store, "moon")) == 3
    store.write(NAMESPACE, [], ["moon-0", "moon-1", "moon-2"])
    assert _found(store, "moon phases") == []
    assert _found(store, "moon kiln") == ["kiln"]
