"""Generations of a namespace's index: what lets a namespace be re-indexed while it is searched.

A namespace's index is one of several generations, each a whole index of its own in the backend (a FAISS
file, a Weaviate tenant) named by `index_name`. The backend's catalog says which generation serves the
namespace's searches and which, at most one, is being built by a re-index (ragtrace/reindex.py). This module
holds the rules every backend shares:

- Searches, counts and the duplicate lookup read the serving generation. A search that races a switch (the
  generation it was about to read dropped meanwhile) is answered from the new one.
- While a generation is being built, each write of the owner's events (an ingest, a delete) goes to both
  generations; a re-index event's write goes to the building generation alone (`write_generation`). When the
  serving generation holds another embedding model's vectors (a model change being rolled out), a write of
  the new model's vectors removes the document from the serving generation instead (its version there is
  stale, and it cannot hold both models): it is searchable again once the new generation serves.
- `switch` makes the building generation the serving one (one write of the catalog) and drops the old one.
  A write that raced it, into the generation just dropped, drops what it recreated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ragtrace.vectorstore import (
    Backend,
    DocumentChunks,
    EmbeddingModel,
    Hit,
    VectorStore,
    written_model,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Generations:
    """A namespace's generations: the one serving its searches, and the one a re-index builds (if any)."""

    serving: int = 0
    building: int | None = None

    @property
    def live(self) -> set[int]:
        return {self.serving} if self.building is None else {self.serving, self.building}


def index_name(namespace: str, generation: int) -> str:
    """The backend's name of a generation's index. Generation 0 keeps the namespace's own name (what every
    index made before generations existed is); `_` is in no namespace's name, so no two can meet."""
    return namespace if generation == 0 else f"{namespace}_g{generation}"


def namespace_of(name: str) -> str:
    return name.split("_g", 1)[0]


class IndexBackend(VectorStore, Protocol):
    """A backend: a VectorStore whose `namespace` arguments name one generation's index (`index_name`), and
    the catalog of each namespace's generations."""

    def document_ids(self, name: str) -> set[str]:
        """The documents that have chunks in the index (none when there is no such index)."""
        ...

    def drop(self, name: str) -> None:
        """Remove the index, if there is one."""
        ...

    def release(self, name: str) -> None:
        """Another process dropped the index: let go of what this one holds of it."""
        ...

    def read_generations(self, namespace: str) -> Generations: ...

    def begin_generation(self, namespace: str) -> int:
        """The generation being built for the namespace: the one there is, else a new one."""
        ...

    def switch_generation(self, namespace: str, generation: int) -> bool:
        """Serve `generation` if it is the one being built; True if it serves now."""
        ...


class GenerationalStore:
    """The VectorStore the services use: a backend's indexes, each namespace through its generations."""

    def __init__(self, indexes: IndexBackend) -> None:
        self.indexes = indexes
        self.backend: Backend = indexes.backend
        self._seen: dict[str, Generations] = {}
        self._lock = threading.Lock()

    # generations

    def generations(self, namespace: str) -> Generations:
        current = self.indexes.read_generations(namespace)
        with self._lock:
            previous = self._seen.get(namespace, current)
            self._seen[namespace] = current
        for retired in previous.live - current.live:  # switched by another process since this one looked
            self.indexes.release(index_name(namespace, retired))
        return current

    def begin(self, namespace: str) -> int:
        """The generation a re-index of the namespace builds (the one being built, if there is one)."""
        return self.indexes.begin_generation(namespace)

    def document_ids(self, namespace: str, generation: int) -> set[str]:
        return self.indexes.document_ids(index_name(namespace, generation))

    def switch(self, namespace: str, generation: int) -> bool:
        """Serve the namespace from `generation`, built, and drop the generation it replaces; again after a
        crash in between, only the drop. False when `generation` neither is being built nor serves."""
        before = self.generations(namespace)
        if before.building == generation:
            if not self.indexes.switch_generation(namespace, generation):
                return False
        elif before.serving != generation:
            return False
        # Generations are numbered one after the other (one is built at a time): it replaces the one before.
        self.indexes.drop(index_name(namespace, generation - 1))
        return True

    # writes

    def write(self, namespace: str, upserts: Sequence[DocumentChunks], deletes: Sequence[str]) -> None:
        """An owner's write: into the serving generation, and into the one being built if there is one."""
        generations = self.generations(namespace)
        serving = index_name(namespace, generations.serving)
        if generations.building is not None:
            self.indexes.write(index_name(namespace, generations.building), upserts, deletes)
            model = written_model(namespace, upserts)
            served = self.indexes.embedding_model(serving)
            if model is not None and served is not None and model != served:
                upserts, deletes = [], [*deletes, *(d.document_id for d in upserts)]
        self.indexes.write(serving, upserts, deletes)
        self._drop_retired(namespace, generations)

    def write_generation(self, namespace: str, generation: int, upserts: Sequence[DocumentChunks]) -> bool:
        """A re-index event's write: into `generation` alone, if it is still being built (True) or serves
        since; False (nothing written) when it is neither."""
        generations = self.generations(namespace)
        if generation not in generations.live:
            return False
        self.indexes.write(index_name(namespace, generation), upserts, [])
        self._drop_retired(namespace, generations)
        return True

    def _drop_retired(self, namespace: str, written: Generations) -> None:
        """A generation written to but switched away from meanwhile may have been recreated by the write."""
        for retired in written.live - self.generations(namespace).live:
            self.indexes.drop(index_name(namespace, retired))

    # reads: the serving generation

    def _serving(self, namespace: str, call: Callable[[str], T]) -> T:
        """`call` on the serving generation's index; when it failed because a switch dropped that index under
        it (whatever the backend then raises), on the new one."""
        serving = self.generations(namespace).serving
        try:
            return call(index_name(namespace, serving))
        except Exception:
            now = self.generations(namespace).serving
            if now == serving:
                raise
            return call(index_name(namespace, now))

    def search(self, namespace: str, vector: Sequence[float], top_k: int) -> list[Hit]:
        return self._serving(namespace, lambda name: self.indexes.search(name, vector, top_k))

    def keyword_search(self, namespace: str, query: str, top_k: int) -> list[Hit]:
        return self._serving(namespace, lambda name: self.indexes.keyword_search(name, query, top_k))

    def hybrid_search(self, namespace: str, query: str, vector: Sequence[float], top_k: int, alpha: float) -> list[Hit]:
        return self._serving(namespace, lambda name: self.indexes.hybrid_search(name, query, vector, top_k, alpha))

    def count(self, namespace: str, document_id: str | None = None) -> int:
        return self._serving(namespace, lambda name: self.indexes.count(name, document_id))

    def embedding_model(self, namespace: str) -> EmbeddingModel | None:
        return self._serving(namespace, self.indexes.embedding_model)

    def documents_with_content(self, namespace: str, content_hash: str) -> list[str]:
        return self._serving(namespace, lambda name: self.indexes.documents_with_content(name, content_hash))

    def namespaces(self) -> list[str]:
        return sorted({namespace_of(name) for name in self.indexes.namespaces()})

    def check(self) -> None:
        self.indexes.check()

    def close(self) -> None:
        self.indexes.close()
