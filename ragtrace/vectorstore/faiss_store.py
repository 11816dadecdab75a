"""Embedded FAISS backend: durable on disk, searchable while another process writes.

Each namespace is one SQLite file (WAL mode: readers never block the writer) holding the chunks, their
vectors and a change log. Each process keeps two in-memory indexes per namespace, a FAISS index (inner product
over normalized vectors = cosine) and a Tantivy keyword index (BM25, keyword_index.py), and, before every
search, applies to the one it searches the changes logged since it last looked, so the indexer's writes are
visible to the search service without reloading. On a machine with a GPU and faiss-gpu, searches run on a GPU
copy of the FAISS index.

Searches of a namespace run side by side: each holds its in-memory indexes for reading and reads rows through a
connection of its own thread, and only bringing the indexes up to date (or swapping in a rebuilt one) holds
them alone, the FAISS and the keyword index together, so both always reflect the same change.

A namespace's index is exact while small and approximate (IVF) above `IndexPolicy.approximate_above`
chunks (faiss_index.py). The switch, and each rebuild a change of size calls for, happens in a thread: the
new index is built from a snapshot of the namespace while searches go on with the old one, then the writes
committed since the snapshot are replayed onto it and it is swapped in, the searches held off meanwhile. An
approximate index is saved beside the namespace (`<namespace>.ivf.npz`, with the change it reflects), so
a restart loads it and replays only the changes since, instead of training again.

Each generation of a namespace (generations.py) is a file of its own (`<namespace>_g<N>.sqlite`); which one
serves and which is being built is in one more SQLite file, `generations.db`, read before every search and
write, so that every process sees a switch at once.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import astuple, dataclass, field, fields
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
from ragtrace.vectorstore.faiss_index import (
    IndexInfo,
    IndexPolicy,
    NamespaceIndex,
    build,
    latest_change,
    placeholders,
    read_all_vectors,
)
from ragtrace.vectorstore.generations import Generations
from ragtrace.vectorstore.keyword_index import KeywordIndex

log = logging.getLogger(__name__)
# An approximate index is saved beside its namespace's SQLite file as <namespace><SAVED_INDEX_SUFFIX>.
SAVED_INDEX_SUFFIX = ".ivf.npz"

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
-- Namespaces written before the keyword index moved to Tantivy kept an FTS5 copy of every chunk.
DROP TRIGGER IF EXISTS chunks_fts_insert;
DROP TRIGGER IF EXISTS chunks_fts_delete;
DROP TABLE IF EXISTS chunks_fts;
"""


_CATALOG = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS generations (  -- a namespace without a row serves generation 0 and builds none
    namespace TEXT PRIMARY KEY,
    serving INTEGER NOT NULL,
    building INTEGER
);
"""

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


class ReadWriteLock:
    """Any number of readers at once, or one writer. A writer that waits lets no new reader in, so a stream
    of searches cannot keep the indexes from being brought up to date."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._writing and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._changed:
                self._readers -= 1
                if not self._readers:  # only a writer waits for the readers to be gone
                    self._changed.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._changed:
            self._writers_waiting += 1
            self._changed.wait_for(lambda: not self._writing and not self._readers)
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._changed:
                self._writing = False
                self._changed.notify_all()


@dataclass
class _Namespace:
    db: sqlite3.Connection  # writes, and reads the change log into the indexes: used under `lock`
    lock: threading.Lock
    path: Path
    # current, keywords and device_index: read by searches under `indexes.reading()`, changed under `writing()`
    indexes: ReadWriteLock = field(default_factory=ReadWriteLock)
    current: NamespaceIndex | None = None  # swapped whole by a rebuild
    keywords: KeywordIndex | None = None  # built on the first keyword or hybrid search
    device_index: faiss.Index | None = None  # GPU copy, rebuilt after changes
    rebuilding: threading.Thread | None = None
    failed_at_size: int | None = None
    closed: bool = False
    readers: threading.local = field(default_factory=threading.local)  # each thread's read-only connection

    def reader(self) -> sqlite3.Connection:
        """This thread's read-only connection to the namespace (WAL: it never waits for the writer)."""
        db: sqlite3.Connection | None = getattr(self.readers, "db", None)
        if db is None:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=30)
            self.readers.db = db
        return db


class FaissStore:
    backend = Backend.FAISS

    def __init__(
        self, data_dir: Path, feedback_chunks: int = FEEDBACK_CHUNKS, policy: IndexPolicy | None = None
    ) -> None:
        self.data_dir = data_dir
        self.feedback_chunks = feedback_chunks
        self.policy = policy or IndexPolicy()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._namespaces: dict[str, _Namespace] = {}
        self._lock = threading.Lock()
        self._gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        self._catalog = sqlite3.connect(
            data_dir / "generations.db", check_same_thread=False, isolation_level=None, timeout=30
        )
        self._catalog.executescript(_CATALOG)
        self._catalog_lock = threading.Lock()

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
                self._namespaces[namespace] = _Namespace(db, threading.Lock(), path)
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

    @contextmanager
    def _reading(self, ns: _Namespace, keywords: bool) -> Iterator[sqlite3.Connection]:
        """The namespace's indexes held for reading, brought up to the last committed change first if they are
        behind it (and the keyword index built, if `keywords` and it was not), with this thread's connection: a
        row read there is as of that change or later, so every row an index names is there, or was deleted since
        (and is left out)."""
        db = ns.reader()
        current, built = ns.current, ns.keywords
        if current is None or current.seq != latest_change(db) or (keywords and built is None):
            with ns.indexes.writing():
                self._catch_up(ns, keywords)
        with ns.indexes.reading():
            yield db

    def _catch_up(self, ns: _Namespace, keywords: bool) -> None:
        """Bring both in-memory indexes to the last committed change, in one snapshot so that they reflect the
        same one (the keyword index only if it exists or `keywords`), and start the rebuild the FAISS index's
        size calls for (call with ns.indexes held for writing)."""
        with ns.lock:
            ns.db.execute("BEGIN")
            try:
                latest = latest_change(ns.db)
                if ns.current is None:
                    ns.current = self._first_index(ns, latest)
                    ns.device_index = self._to_gpu(ns.current)
                elif ns.current.seq != latest:
                    ns.current.apply_changes(ns.db, latest)
                    ns.device_index = self._to_gpu(ns.current)
                if ns.keywords is None and keywords:
                    ns.keywords = KeywordIndex.build(ns.db, latest)
                elif ns.keywords is not None and ns.keywords.seq != latest:
                    ns.keywords.apply_changes(ns.db, latest)
            finally:
                ns.db.execute("COMMIT")
            self._start_rebuild_if_due(ns, ns.current)

    def _first_index(self, ns: _Namespace, latest: int) -> NamespaceIndex:
        """The approximate index this store saved, brought up to date, when it still matches the namespace;
        else the exact index of every chunk (the policy then rebuilds it in the background if it is large)."""
        saved = self._saved_path(ns)
        if saved.exists():
            loaded = NamespaceIndex.load(saved)
            if loaded.seq <= latest:
                loaded.apply_changes(ns.db, latest)
                if loaded.size == ns.db.execute("SELECT count(*) FROM chunks").fetchone()[0]:
                    return loaded
            log.warning("%s does not match its namespace (recreated?): rebuilding", saved)
            saved.unlink(missing_ok=True)
        ids, vectors = read_all_vectors(ns.db)
        return build(ids, vectors, 0, self.policy.min_recall, latest)

    def _start_rebuild_if_due(self, ns: _Namespace, current: NamespaceIndex) -> None:
        """A rebuild in a thread when the namespace's size calls for another index and none is running."""
        if ns.rebuilding is not None and ns.rebuilding.is_alive():
            return
        cells = self.policy.rebuild_cells(current.size, current.cells)
        if cells is None or ns.failed_at_size == current.size:
            return
        ns.rebuilding = threading.Thread(
            target=self._rebuild, args=(ns, cells, current.size), name="faiss-rebuild", daemon=True
        )
        ns.rebuilding.start()

    def _rebuild(self, ns: _Namespace, cells: int, size: int) -> None:
        """Build the new index from a snapshot of the namespace (its own connection: searches go on with the
        old index meanwhile), save it when approximate, then, under the lock, replay the writes committed
        since the snapshot onto it and swap it in."""
        try:
            with closing(sqlite3.connect(f"file:{ns.path}?mode=ro", uri=True, timeout=30)) as db:
                db.execute("BEGIN")  # one snapshot: the vectors and the change they reflect
                seq = latest_change(db)
                ids, vectors = read_all_vectors(db)
                db.execute("COMMIT")
            built = build(ids, vectors, cells, self.policy.min_recall, seq)
            del ids, vectors
            if ns.closed:
                return
            if built.cells:
                built.save(self._saved_path(ns))
            else:
                self._saved_path(ns).unlink(missing_ok=True)
            with ns.indexes.writing(), ns.lock:
                if ns.closed:
                    return
                ns.db.execute("BEGIN")
                try:  # the keyword index to the same change as the new FAISS index
                    latest = latest_change(ns.db)
                    built.apply_changes(ns.db, latest)
                    if ns.keywords is not None:
                        ns.keywords.apply_changes(ns.db, latest)
                finally:
                    ns.db.execute("COMMIT")
                ns.current = built
                ns.device_index = self._to_gpu(built)
            log.info("namespace index rebuilt: %s", built.info())
        except Exception:
            ns.failed_at_size = size  # not again until the namespace changes size
            log.exception("rebuilding the index of %s failed; searches go on with the old one", ns.path)

    def _saved_path(self, ns: _Namespace) -> Path:
        return ns.path.with_suffix(SAVED_INDEX_SUFFIX)

    def _to_gpu(self, index: NamespaceIndex) -> faiss.Index | None:
        if not self._gpus or index.size == 0:
            return None
        return faiss.index_cpu_to_all_gpus(index.index)

    def settle(self, namespace: str) -> IndexInfo:
        """Bring the namespace's indexes up to date (the keyword index built if it was not) and wait until
        the rebuild the FAISS index calls for, if any, is swapped in: what it is searched with from then on
        (for benchmarks and tests)."""
        ns = self._open(namespace, create=False)
        while True:
            with ns.indexes.writing():
                self._catch_up(ns, keywords=True)
                current = ns.current
                rebuilding = ns.rebuilding
                if current is not None and (rebuilding is None or not rebuilding.is_alive()):
                    return current.info()
            if rebuilding is not None:
                rebuilding.join()

    def search(self, namespace: str, vector: Sequence[float], top_k: int) -> list[Hit]:
        ns = self._open(namespace, create=False)
        with self._reading(ns, keywords=False) as db:
            return _hits(db, self._nearest(ns, vector, top_k))

    @staticmethod
    def _nearest(ns: _Namespace, vector: Sequence[float], top_k: int) -> list[tuple[int, float]]:
        """(FAISS id, cosine) of the top_k nearest chunks, best first (call within `_reading`)."""
        query = np.asarray([vector], dtype=np.float32)
        current = ns.current
        if current is None or current.size == 0:
            return []
        if current.index.d != query.shape[1]:
            raise ValueError(f"the query vector has dimension {query.shape[1]}, the index {current.index.d}")
        index = ns.device_index or current.index
        scores, ids = index.search(query, min(top_k, current.size))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def keyword_search(self, namespace: str, query: str, top_k: int) -> list[Hit]:
        ns = self._open(namespace, create=False)
        with self._reading(ns, keywords=True) as db:
            return _hits(db, _keywords(ns).search(query, top_k))

    def hybrid_search(self, namespace: str, query: str, vector: Sequence[float], top_k: int, alpha: float) -> list[Hit]:
        """Both rankings as ids and the feedback vectors from the FAISS index itself: chunk rows are read
        only for the top_k that are returned."""
        candidates = max(top_k * 4, HYBRID_CANDIDATES)
        ns = self._open(namespace, create=False)
        # Both indexes reflect the same change: every keyword match is in the index the feedback vectors are
        # read from.
        with self._reading(ns, keywords=True) as db:
            nearest = [i for i, _ in self._nearest(ns, vector, candidates)]
            keyword = [i for i, _ in _keywords(ns).search(query, candidates)]
            feedback = feedback_ids(nearest, keyword, self.feedback_chunks)
            if feedback and ns.current is not None:
                feedback_vectors = ns.current.index.reconstruct_batch(np.asarray(feedback, dtype=np.int64))
                nearest = [i for i, _ in self._nearest(ns, expanded_query(vector, feedback_vectors), candidates)]
            return _hits(db, fused_ranking(nearest, keyword, alpha, top_k))

    def count(self, namespace: str, document_id: str | None = None) -> int:
        try:
            ns = self._open(namespace, create=False)
        except UnknownNamespace:
            return 0
        db = ns.reader()
        if document_id is None:
            return int(db.execute("SELECT count(*) FROM chunks").fetchone()[0])
        return int(db.execute("SELECT count(*) FROM chunks WHERE document_id = ?", (document_id,)).fetchone()[0])

    def embedding_model(self, namespace: str) -> EmbeddingModel | None:
        try:
            ns = self._open(namespace, create=False)
        except UnknownNamespace:
            return None
        return _recorded_model(ns.reader())

    def documents_with_content(self, namespace: str, content_hash: str) -> list[str]:
        try:
            ns = self._open(namespace, create=False)
        except UnknownNamespace:
            return []
        rows = ns.reader().execute(
            "SELECT document_id FROM documents WHERE content_hash = ? ORDER BY document_id", (content_hash,)
        )
        return [str(row[0]) for row in rows]

    def namespaces(self) -> list[str]:
        return sorted(path.stem for path in self.data_dir.glob("*.sqlite"))

    def document_ids(self, name: str) -> set[str]:
        try:
            ns = self._open(name, create=False)
        except UnknownNamespace:
            return set()
        return {str(row[0]) for row in ns.reader().execute("SELECT DISTINCT document_id FROM chunks")}

    def release(self, name: str) -> None:
        # Not closed here: a search that took it just before goes on with it; it closes once unreferenced.
        with self._lock:
            ns = self._namespaces.pop(name, None)
        if ns is not None:
            ns.closed = True  # a rebuild in flight is dropped

    def drop(self, name: str) -> None:
        self.release(name)
        path = self._path(name)
        for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), path.with_suffix(SAVED_INDEX_SUFFIX)):
            file.unlink(missing_ok=True)

    # the catalog of generations

    def read_generations(self, namespace: str) -> Generations:
        with self._catalog_lock:
            return _generations(self._catalog, namespace)

    def begin_generation(self, namespace: str) -> int:
        with self._catalog_lock:
            self._catalog.execute("BEGIN IMMEDIATE")
            try:
                current = _generations(self._catalog, namespace)
                building = current.serving + 1 if current.building is None else current.building
                self._catalog.execute(
                    "INSERT OR REPLACE INTO generations(namespace, serving, building) VALUES (?, ?, ?)",
                    (namespace, current.serving, building),
                )
                self._catalog.execute("COMMIT")
            except BaseException:
                self._catalog.execute("ROLLBACK")
                raise
            return building

    def switch_generation(self, namespace: str, generation: int) -> bool:
        with self._catalog_lock:
            switched = self._catalog.execute(
                "UPDATE generations SET serving = building, building = NULL WHERE namespace = ? AND building = ?",
                (namespace, generation),
            )
            return switched.rowcount == 1

    def check(self) -> None:
        """Embedded: usable whenever its folder is."""
        if not self.data_dir.is_dir():
            raise DependencyUnavailable("index", f"{self.data_dir} is missing")

    def close(self) -> None:
        with self._lock:
            for ns in self._namespaces.values():
                with ns.lock:
                    ns.closed = True  # a rebuild in flight is dropped
                    ns.db.close()
            self._namespaces.clear()
        with self._catalog_lock:
            self._catalog.close()


def _keywords(ns: _Namespace) -> KeywordIndex:
    """The keyword index `_reading(ns, keywords=True)` built (call within it)."""
    if ns.keywords is None:
        raise RuntimeError("the keyword index is read outside _reading(keywords=True)")
    return ns.keywords


def _generations(catalog: sqlite3.Connection, namespace: str) -> Generations:
    row = catalog.execute("SELECT serving, building FROM generations WHERE namespace = ?", (namespace,)).fetchone()
    return Generations(int(row[0]), None if row[1] is None else int(row[1])) if row else Generations()


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


def _hits(db: sqlite3.Connection, ranked: Sequence[tuple[int, float]]) -> list[Hit]:
    """The chunks of (row id, score) pairs, in their order, with that score."""
    columns = 'id, chunk_id, document_id, content, metadata, chunk_no, start, "end", ' + _PROVENANCE_COLUMNS
    found_rows = (
        f"SELECT {columns} FROM chunks LEFT JOIN provenance USING (document_id)"  # noqa: S608
        f" WHERE id IN ({placeholders(ranked)})"
    )
    rows = {row[0]: row for row in db.execute(found_rows, [i for i, _ in ranked])}
    return [_hit(rows[i], score) for i, score in ranked if i in rows]


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
