"""Embedded FAISS backend: durable on disk, searchable while another process writes.

Each namespace is one SQLite file (WAL mode: readers never block the writer) holding the chunks, their
vectors, an FTS5 keyword index kept in step by triggers, and a change log. Each process keeps an in-memory
FAISS index per namespace (inner product over normalized vectors = cosine) and, before every search,
applies the changes logged since it last looked, so the indexer's writes are visible to the search service
without reloading. On a machine with a GPU and faiss-gpu, searches run on a GPU copy of the index.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import faiss
import numpy as np

from ragtrace.errors import DependencyUnavailable
from ragtrace.vectorstore import (
    FEEDBACK_CHUNKS,
    HYBRID_CANDIDATES,
    Backend,
    DocumentChunks,
    EmbeddingModel,
    Hit,
    Provenance,
    UnknownNamespace,
    check_model,
    expanded_query,
    feedback_ids,
    fused_ranking,
    written_model,
)

_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: it is the FAISS id
    chunk_id TEXT NOT NULL UNIQUE,
    document_id TEXT NOT NULL,
    chunk_no INTEGER NOT NULL,
    content TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id);
CREATE TABLE IF NOT EXISTS documents (  -- the content each indexed document's chunks come from
    document_id TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_by_content ON documents(content_hash);
CREATE TABLE IF NOT EXISTS provenance (  -- how each indexed document got in (Provenance), for its sources
    document_id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    indexed_at TEXT NOT NULL,
    model TEXT NOT NULL,
    pipeline_version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS embedding_model (  -- one row while the namespace holds chunks
    id INTEGER PRIMARY KEY CHECK (id = 1),
    model TEXT NOT NULL,
    dimension INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    id INTEGER NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    content, title, content='chunks', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, content, title) VALUES (new.id, new.content, new.title);
END;
CREATE TRIGGER IF NOT EXISTS chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, content, title) VALUES ('delete', old.id, old.content, old.title);
END;
"""


# FTS5's bm25() is lower-is-better; negated, higher is better like every other score here.
_KEYWORD_SEARCH = (
    "SELECT rowid, -bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts) LIMIT ?"
)

_INSERT_CHUNK = (
    'INSERT INTO chunks(chunk_id, document_id, chunk_no, content, title, start, "end", metadata, vector)'
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# The provenance table's columns are Provenance's fields, in their order.
_PROVENANCE = [f.name for f in fields(Provenance)]
_INSERT_PROVENANCE = (
    f"INSERT INTO provenance(document_id, {', '.join(_PROVENANCE)}) VALUES (?{', ?' * len(_PROVENANCE)})"  # noqa: S608
)
# A document indexed before provenance was kept has no row: its columns read as NULL, its Provenance as empty.
_PROVENANCE_COLUMNS = ", ".join(f"coalesce({name}, '')" for name in _PROVENANCE)


@dataclass
class _Namespace:
    db: sqlite3.Connection
    lock: threading.Lock
    index: faiss.IndexIDMap2 | None = None
    seen_seq: int = 0
    device_index: faiss.Index | None = None  # GPU copy, rebuilt after changes


class FaissStore:
    backend = Backend.FAISS

    def __init__(self, data_dir: Path, feedback_chunks: int = FEEDBACK_CHUNKS) -> None:
        self.data_dir = data_dir
        self.feedback_chunks = feedback_chunks
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._namespaces: dict[str, _Namespace] = {}
        self._lock = threading.Lock()
        self._gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0

    def _path(self, namespace: str) -> Path:
        return self.data_dir / f"{namespace}.sqlite"

    def _open(self, namespace: str, create: bool) -> _Namespace:
        with self._lock:
            if namespace not in self._namespaces:
                path = self._path(namespace)
                if not create and not path.exists():
                    raise UnknownNamespace(namespace)
                db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
                db.executescript(_SCHEMA)
                db.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes in WAL mode
                self._namespaces[namespace] = _Namespace(db, threading.Lock())
            return self._namespaces[namespace]

    def write(self, namespace: str, upserts: Sequence[DocumentChunks], deletes: Sequence[str]) -> None:
        model = written_model(namespace, upserts)
        ns = self._open(namespace, create=True)
        replaced = [d.document_id for d in upserts] + list(deletes)
        with ns.lock:
            db = ns.db
            db.execute("BEGIN IMMEDIATE")
            try:
                for document_id in replaced:
                    ids = [row[0] for row in db.execute("SELECT id FROM chunks WHERE document_id = ?", (document_id,))]
                    db.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
                    db.execute("DELETE FROM documents WHERE document_id = ?", (document_id,))
                    db.execute("DELETE FROM provenance WHERE document_id = ?", (document_id,))
                    db.executemany("INSERT INTO changes(op, id) VALUES ('remove', ?)", [(i,) for i in ids])
                _record_model(db, namespace, model)
                for document in upserts:
                    if document.content_hash and document.chunks:
                        db.execute(
                            "INSERT INTO documents(document_id, content_hash) VALUES (?, ?)",
                            (document.document_id, document.content_hash),
                        )
                    if document.chunks:
                        db.execute(_INSERT_PROVENANCE, (document.document_id, *astuple(document.provenance)))
                    metadata = json.dumps(dict(document.metadata))
                    title = str(document.metadata.get("title", ""))
                    for chunk in document.chunks:
                        cursor = db.execute(
                            _INSERT_CHUNK,
                            (
                                chunk.chunk_id,
                                document.document_id,
                                chunk.chunk_no,
                                chunk.content,
                                title,
                                chunk.start,
                                chunk.end,
                                metadata,
                                np.asarray(chunk.vector, dtype=np.float32).tobytes(),
                            ),
                        )
                        db.execute("INSERT INTO changes(op, id) VALUES ('add', ?)", (cursor.lastrowid,))
                if not _holds_chunks(db):
                    db.execute("DELETE FROM embedding_model")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _sync(self, ns: _Namespace) -> faiss.Index:
        """Bring the in-memory index up to the last committed change (call with ns.lock held)."""
        db = ns.db
        latest = db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
        if ns.index is not None and latest == ns.seen_seq:
            return ns.device_index or ns.index
        changes = db.execute("SELECT op, id FROM changes WHERE seq > ? ORDER BY seq", (ns.seen_seq,)).fetchall()
        if ns.index is None:
            ns.index = self._load_all(db)
        else:
            removed = [i for op, i in changes if op == "remove"]
            added = [i for op, i in changes if op == "add"]
            if removed:
                _remove(ns.index, np.asarray(removed, dtype=np.int64))
            if added:
                added_rows = f"SELECT id, vector FROM chunks WHERE id IN ({_placeholders(added)})"  # noqa: S608
                ids, vectors = _vectors(db, added_rows, added)
                if len(ids):
                    if ns.index.ntotal == 0 and ns.index.d != vectors.shape[1]:
                        ns.index = _new_index(vectors.shape[1])  # the first vectors fix the dimension
                    _remove(ns.index, ids)  # re-applying a change must not add a second copy
                    ns.index.add_with_ids(vectors, ids)
        ns.seen_seq = latest
        ns.device_index = self._to_gpu(ns.index)
        return ns.device_index or ns.index

    def _load_all(self, db: sqlite3.Connection) -> faiss.IndexIDMap2:
        ids, vectors = _vectors(db, "SELECT id, vector FROM chunks", [])
        index = _new_index(vectors.shape[1])
        if len(ids):
            index.add_with_ids(vectors, ids)
        return index

    def _to_gpu(self, index: faiss.IndexIDMap2) -> faiss.Index | None:
        if not self._gpus or index.ntotal == 0:
            return None
        return faiss.index_cpu_to_all_gpus(index)

    def search(self, namespace: str, vector: Sequence[float], top_k: int) -> list[Hit]:
        ns = self._open(namespace, create=False)
        with ns.lock:
            return _hits(ns.db, self._nearest(ns, vector, top_k))

    def _nearest(self, ns: _Namespace, vector: Sequence[float], top_k: int) -> list[tuple[int, float]]:
        """(FAISS id, cosine) of the top_k nearest chunks, best first (call with ns.lock held)."""
        query = np.asarray([vector], dtype=np.float32)
        index = self._sync(ns)
        if index.ntotal == 0:
            return []
        if index.d != query.shape[1]:
            raise ValueError(f"the query vector has dimension {query.shape[1]}, the index {index.d}")
        scores, ids = index.search(query, min(top_k, index.ntotal))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def keyword_search(self, namespace: str, query: str, top_k: int) -> list[Hit]:
        ns = self._open(namespace, create=False)
        with ns.lock:
            return _hits(ns.db, _matches(ns.db, query, top_k))

    def hybrid_search(self, namespace: str, query: str, vector: Sequence[float], top_k: int, alpha: float) -> list[Hit]:
        """Both rankings as ids and the feedback vectors from the FAISS index itself: chunk rows are read
        only for the top_k that are returned."""
        candidates = max(top_k * 4, HYBRID_CANDIDATES)
        ns = self._open(namespace, create=False)
        with ns.lock:
            # One read snapshot: every keyword match is in the index the feedback vectors are read from.
            ns.db.execute("BEGIN")
            try:
                nearest = [i for i, _ in self._nearest(ns, vector, candidates)]
                keyword = [i for i, _ in _matches(ns.db, query, candidates)]
                feedback = feedback_ids(nearest, keyword, self.feedback_chunks)
                if feedback and ns.index is not None:
                    feedback_vectors = ns.index.reconstruct_batch(np.asarray(feedback, dtype=np.int64))
                    nearest = [i for i, _ in self._nearest(ns, expanded_query(vector, feedback_vectors), candidates)]
                return _hits(ns.db, fused_ranking(nearest, keyword, alpha, top_k))
            finally:
                ns.db.execute("COMMIT")

    def count(self, namespace: str, document_id: str | None = None) -> int:
        try:
            ns = self._open(namespace, create=False)
        except UnknownNamespace:
            return 0
        with ns.lock:
            if document_id is None:
                return int(ns.db.execute("SELECT count(*) FROM chunks").fetchone()[0])
            return int(ns.db.execute("SELECT count(*) FROM chunks WHERE document_id = ?", (document_id,)).fetchone()[0])

    def embedding_model(self, namespace: str) -> EmbeddingModel | None:
        try:
            ns = self._open(namespace, create=False)
        except UnknownNamespace:
            return None
        with ns.lock:
            return _recorded_model(ns.db)

    def documents_with_content(self, namespace: str, content_hash: str) -> list[str]:
        try:
            ns = self._open(namespace, create=False)
        except UnknownNamespace:
            return []
        with ns.lock:
            rows = ns.db.execute(
                "SELECT document_id FROM documents WHERE content_hash = ? ORDER BY document_id", (content_hash,)
            )
            return [str(row[0]) for row in rows]

    def namespaces(self) -> list[str]:
        return sorted(path.stem for path in self.data_dir.glob("*.sqlite"))

    def check(self) -> None:
        """Embedded: usable whenever its folder is."""
        if not self.data_dir.is_dir():
            raise DependencyUnavailable("index", f"{self.data_dir} is missing")

    def close(self) -> None:
        with self._lock:
            for ns in self._namespaces.values():
                ns.db.close()
            self._namespaces.clear()


def _recorded_model(db: sqlite3.Connection) -> EmbeddingModel | None:
    row = db.execute("SELECT model, dimension FROM embedding_model").fetchone()
    return EmbeddingModel(str(row[0]), int(row[1])) if row else None


def _holds_chunks(db: sqlite3.Connection) -> bool:
    return bool(db.execute("SELECT EXISTS (SELECT 1 FROM chunks)").fetchone()[0])


def _record_model(db: sqlite3.Connection, namespace: str, model: EmbeddingModel | None) -> None:
    """Inside the write's transaction, once the replaced chunks are gone: the chunks that stay must be the
    written model's, else the write is refused (ModelMismatch, rolled back)."""
    if model is None:
        return
    if _holds_chunks(db):
        check_model(namespace, _recorded_model(db), model)
    db.execute(
        "INSERT OR REPLACE INTO embedding_model(id, model, dimension) VALUES (1, ?, ?)", (model.name, model.dimension)
    )


def _matches(db: sqlite3.Connection, query: str, top_k: int) -> list[tuple[int, float]]:
    """(chunk row id, BM25 score) of the top_k chunks matching any word of the query, best first."""
    terms = re.findall(r"\w+", query.lower())
    if not terms:
        return []
    # Each word quoted and ORed: the user's text is never read as FTS5 query syntax.
    expression = " OR ".join(f'"{term}"' for term in terms)
    return [(int(i), float(score)) for i, score in db.execute(_KEYWORD_SEARCH, (expression, top_k))]


def _hits(db: sqlite3.Connection, ranked: Sequence[tuple[int, float]]) -> list[Hit]:
    """The chunks of (row id, score) pairs, in their order, with that score."""
    columns = 'id, chunk_id, document_id, content, metadata, chunk_no, start, "end", ' + _PROVENANCE_COLUMNS
    found_rows = (
        f"SELECT {columns} FROM chunks LEFT JOIN provenance USING (document_id)"  # noqa: S608
        f" WHERE id IN ({_placeholders(ranked)})"
    )
    rows = {row[0]: row for row in db.execute(found_rows, [i for i, _ in ranked])}
    return [_hit(rows[i], score) for i, score in ranked if i in rows]


def _placeholders(values: Sequence[object]) -> str:
    """`?, ?, ?` for an IN clause: the values themselves are always bound parameters."""
    return ", ".join("?" * len(values))


def _remove(index: faiss.IndexIDMap2, ids: np.ndarray) -> None:
    # faiss's Python wrapper takes an id array here; its type stubs only know the IDSelector form.
    index.remove_ids(ids)  # type: ignore[arg-type]


def _new_index(dimension: int) -> faiss.IndexIDMap2:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def _vectors(db: sqlite3.Connection, sql: str, params: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    rows = db.execute(sql, list(params)).fetchall()
    ids = np.asarray([row[0] for row in rows], dtype=np.int64)
    if not rows:
        return ids, np.zeros((0, 1), dtype=np.float32)
    return ids, np.vstack([np.frombuffer(row[1], dtype=np.float32) for row in rows])


def _hit(row: tuple[object, ...], score: float) -> Hit:
    _, chunk_id, document_id, content, metadata, chunk_no, start, end, *provenance = row
    meta = json.loads(str(metadata))
    meta.update({"chunk_no": chunk_no, "start": start, "end": end})
    return Hit(
        chunk_id=str(chunk_id),
        document_id=str(document_id),
        content=str(content),
        score=score,
        metadata=meta,
        provenance=Provenance(*(str(value) for value in provenance)),
    )
