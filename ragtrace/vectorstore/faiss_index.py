"""The in-memory FAISS index of one namespace: exact while the namespace is small, approximate once large.

Exact: a flat inner-product index (IndexFlatIP under an id map). Every search reads every vector, so its cost
grows linearly with the namespace. Approximate: an inverted-file index (IndexIVFFlat, inner product) of
about √N cells, searched in the `nprobe` cells nearest the query. `nprobe` is not a constant: when the index
is built it is calibrated on the namespace's own vectors, the smallest that reaches the wanted recall@10
against exact search on sample queries. IVF keeps the chunk ids itself and removes them through a hash-table
direct map, so deletions and updates apply to it exactly as to the flat index, with no tombstones; the same
map reconstructs a stored vector (hybrid search's feedback). `IndexPolicy` says which index a namespace's
size calls for; the store builds it in the background and swaps it in (faiss_store.py).
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ragtrace.vectorstore import APPROXIMATE_ABOVE, APPROXIMATE_RECALL

RECALL_AT = 10
# Calibration queries: stored vectors moved away from themselves (cosine about 0.8), as a question lies near,
# not on, the chunks that answer it.
CALIBRATION_QUERIES = 256
CALIBRATION_NOISE = 0.75
# k-means sees at most this many vectors per cell: enough for the centroids, and training stays seconds at 1M.
TRAINING_VECTORS_PER_CELL = 64


@dataclass(frozen=True)
class IndexPolicy:
    """Which index a namespace's size calls for. The switch back to exact waits until the namespace is half
    the threshold, and the cells are rebuilt only when √N is twice or half of them: sizes that hover near
    a boundary never rebuild over and over."""

    approximate_above: int = APPROXIMATE_ABOVE
    min_recall: float = APPROXIMATE_RECALL

    def rebuild_cells(self, size: int, cells: int) -> int | None:
        """The cells to rebuild an index of `size` vectors and `cells` cells (0: exact) with, 0 meaning
        exact; None when it is right as it is."""
        if cells == 0:
            return cells_for(size) if size >= max(self.approximate_above, 1) else None
        if size < self.approximate_above // 2:
            return 0
        wanted = cells_for(size)
        return wanted if wanted > 2 * cells or 2 * wanted < cells else None


def cells_for(size: int) -> int:
    """IVF cells for `size` vectors: √N, faiss's rule of thumb for balancing the coarse and the fine search."""
    return max(1, round(math.sqrt(size)))


@dataclass(frozen=True)
class Changes:
    """The change log between an index's last applied entry and the latest: the row ids removed and added.
    Every index kept in step with a namespace (this one, keyword_index.py's) applies it the same way."""

    removed: list[int]
    added: list[int]

    @classmethod
    def read(cls, db: sqlite3.Connection, after: int, latest: int) -> Changes:
        rows = db.execute("SELECT op, id FROM changes WHERE seq > ? AND seq <= ? ORDER BY seq", (after, latest))
        changes = cls([], [])
        for op, row_id in rows:
            (changes.removed if op == "remove" else changes.added).append(int(row_id))
        return changes

    def added_rows(self, db: sqlite3.Connection, columns: str) -> list[tuple[Any, ...]]:
        """(id, *columns) of the rows added that still exist (a later change may have removed one)."""
        if not self.added:
            return []
        sql = f"SELECT id, {columns} FROM chunks WHERE id IN ({placeholders(self.added)})"  # noqa: S608
        return db.execute(sql, self.added).fetchall()


@dataclass(frozen=True)
class IndexInfo:
    """What a namespace is searched with: exact or approximate (cells, nprobe, the recall@10 calibrated)."""

    kind: str  # "exact" or "approximate"
    size: int
    cells: int = 0
    nprobe: int = 0
    recall: float | None = None
    build_s: float = 0.0


class NamespaceIndex:
    """One namespace's FAISS index and the last change-log entry applied to it."""

    def __init__(self, index: faiss.Index, seq: int, nprobe: int = 0, recall: float | None = None) -> None:
        self.index = index
        self.seq = seq
        self.nprobe = nprobe
        self.recall = recall
        self.build_s = 0.0

    @property
    def cells(self) -> int:
        return int(self.index.nlist) if isinstance(self.index, faiss.IndexIVF) else 0

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def info(self) -> IndexInfo:
        kind = "approximate" if self.cells else "exact"
        return IndexInfo(kind, self.size, self.cells, self.nprobe, self.recall, round(self.build_s, 2))

    def apply_changes(self, db: sqlite3.Connection, latest: int) -> None:
        """Apply the change log after `seq` up to `latest`: removals, then the rows added that still exist.
        Applying a change twice is harmless (an added id is removed first), which is what lets a rebuilt
        index replay the writes that came in while it was built."""
        changes = Changes.read(db, self.seq, latest)
        if changes.removed:
            _remove(self.index, np.asarray(changes.removed, dtype=np.int64))
        ids, vectors = _as_arrays(changes.added_rows(db, "vector"))
        if len(ids):
            if self.size == 0 and self.index.d != vectors.shape[1]:
                self.index = exact_index(vectors.shape[1])  # the first vectors fix the dimension
            _remove(self.index, ids)
            self.index.add_with_ids(vectors, ids)
        self.seq = latest

    def search(self, query: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(query, min(top_k, self.size))

    def save(self, path: Path) -> None:
        """Write the index and the change it reflects to `path` at once (a temporary file, then a rename):
        a reader sees the old file or the new one, never half of one."""
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with temporary.open("wb") as file:
            np.savez(
                file,
                build_s=self.build_s,
                index=faiss.serialize_index(self.index),
                seq=self.seq,
                nprobe=self.nprobe,
                recall=self.recall if self.recall is not None else np.nan,
            )
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> NamespaceIndex:
        with np.load(path) as saved:
            index = faiss.deserialize_index(saved["index"])
            recall = float(saved["recall"])
            loaded = cls(index, int(saved["seq"]), int(saved["nprobe"]), None if math.isnan(recall) else recall)
            loaded.build_s = float(saved["build_s"])
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = loaded.nprobe
        return loaded


def build(ids: np.ndarray, vectors: np.ndarray, cells: int, min_recall: float, seq: int) -> NamespaceIndex:
    """A new index of these vectors reflecting the change log up to `seq`: exact when `cells` is 0, else IVF
    with `cells` cells and nprobe calibrated for `min_recall`. Its build time is recorded."""
    started = time.perf_counter()
    if cells == 0 or len(ids) == 0:
        built = NamespaceIndex(exact_index(vectors.shape[1]), seq)
        if len(ids):
            built.index.add_with_ids(vectors, ids)
    else:
        index = _trained_ivf(vectors, min(cells, len(ids)))
        index.add_with_ids(vectors, ids)
        nprobe, recall = calibrate(index, ids, vectors, min_recall)
        built = NamespaceIndex(index, seq, nprobe, recall)
    built.build_s = time.perf_counter() - started
    return built


def exact_index(dimension: int) -> faiss.IndexIDMap2:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def _trained_ivf(vectors: np.ndarray, cells: int) -> faiss.IndexIVFFlat:
    dimension = vectors.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, cells, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = min(len(vectors), cells * TRAINING_VECTORS_PER_CELL)
    index.train(vectors[np.sort(rng.choice(len(vectors), sample, replace=False))])
    # Removal and reconstruction by chunk id; faiss's type stubs lack DirectMap.
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    return index


def calibration_queries(
    ids: np.ndarray, vectors: np.ndarray, count: int = CALIBRATION_QUERIES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`count` stored vectors, each moved by noise to a cosine of about 0.8 from where it was and normalized,
    and the ids they come from."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(vectors), min(count, len(vectors)), replace=False)
    noise = rng.standard_normal((len(picked), vectors.shape[1])).astype(np.float32)
    noise *= CALIBRATION_NOISE / np.linalg.norm(noise, axis=1, keepdims=True)
    queries = vectors[picked] + noise
    faiss.normalize_L2(queries)
    return queries, ids[picked]


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k that the approximate top-k holds (ids; -1 is no result)."""
    hits = sum(
        len(set(row[row >= 0].tolist()) & set(truth[truth >= 0].tolist()))
        for row, truth in zip(found, exact, strict=True)
    )
    return hits / max(1, int((exact >= 0).sum()))


def _without_sources(found: np.ndarray, sources: np.ndarray, k: int) -> np.ndarray:
    """Each row's first k ids other than its query's source."""
    return np.asarray([row[row != source][:k] for row, source in zip(found, sources, strict=True)])


def calibrate(index: faiss.IndexIVF, ids: np.ndarray, vectors: np.ndarray, min_recall: float) -> tuple[int, float]:
    """The smallest nprobe whose recall@10 against exact search reaches `min_recall` on calibration
    queries (doubling, then bisection: recall grows with nprobe), set on the index; and that recall. A
    query's own source is left out of both top 10s: it is the one neighbour a real query does not have
    (found almost always, it would make recall look better than a new query gets)."""
    queries, sources = calibration_queries(ids, vectors)
    k = min(RECALL_AT, len(vectors) - 1)
    _, positions = faiss.knn(queries, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    exact = _without_sources(np.where(positions >= 0, ids[positions], -1), sources, k)

    def recall(nprobe: int) -> float:
        index.nprobe = nprobe
        return recall_at(_without_sources(index.search(queries, k + 1)[1], sources, k), exact)

    low, high = 0, 1  # recall(low) falls short (0: nothing searched), recall(high) is the candidate
    while high < index.nlist and recall(high) < min_recall:
        low, high = high, min(2 * high, index.nlist)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if recall(middle) < min_recall else (low, middle)
    reached = recall(high)
    return high, round(reached, 4)


def _as_arrays(rows: Sequence[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of (id, vector blob) rows."""
    ids = np.asarray([row[0] for row in rows], dtype=np.int64)
    if not rows:
        return ids, np.zeros((0, 1), dtype=np.float32)
    return ids, np.vstack([np.frombuffer(row[1], dtype=np.float32) for row in rows])


def read_all_vectors(db: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray]:
    """Every chunk's (id, vector), read into arrays allocated once: no list of a million row objects."""
    total, dimension = db.execute("SELECT count(*), max(length(vector)) / 4 FROM chunks").fetchone()
    if not total:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 1), dtype=np.float32)
    ids = np.empty(total, dtype=np.int64)
    vectors = np.empty((total, dimension), dtype=np.float32)
    for row, (chunk_id, blob) in enumerate(db.execute("SELECT id, vector FROM chunks")):
        ids[row] = chunk_id
        vectors[row] = np.frombuffer(blob, dtype=np.float32)
    return ids, vectors


def latest_change(db: sqlite3.Connection) -> int:
    """The namespace's last change-log entry (0 before its first write)."""
    return int(db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])


def placeholders(values: Sequence[object]) -> str:
    """`?, ?, ?` for an IN clause: the values themselves are always bound parameters."""
    return ", ".join("?" * len(values))


def _remove(index: faiss.Index, ids: np.ndarray) -> None:
    # faiss's Python wrapper takes an id array here; its type stubs only know the IDSelector form.
    index.remove_ids(ids)  # type: ignore[arg-type]
