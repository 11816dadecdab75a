"""One small vector-store interface with two real backends: embedded FAISS (default) and Weaviate.

Every namespace is its own store (a FAISS/SQLite file, a Weaviate tenant): one can never read another's.
Writes are idempotent: `write` replaces all of a document's chunks, keyed by deterministic chunk ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic_settings import BaseSettings, SettingsConfigDict

from ragtrace.settings import WeaviateSettings

# Candidates each retriever contributes to a hybrid fusion (at least; more for a larger top_k).
HYBRID_CANDIDATES = 50


class Backend(StrEnum):
    FAISS = "faiss"
    WEAVIATE = "weaviate"


class VectorStoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_INDEX_", extra="ignore", frozen=True)

    backend: Backend = Backend.FAISS
    data_dir: Path = Path(".state/index")  # FAISS backend: one SQLite file per namespace
    weaviate_collection: str = "RagtraceChunk"


@dataclass(frozen=True)
class IndexedChunk:
    chunk_id: str
    chunk_no: int
    content: str
    start: int
    end: int
    vector: Sequence[float]


@dataclass(frozen=True)
class DocumentChunks:
    document_id: str
    metadata: Mapping[str, Any]
    chunks: Sequence[IndexedChunk]


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    document_id: str
    content: str
    score: float
    metadata: Mapping[str, Any] = field(default_factory=dict)


class UnknownNamespace(LookupError):
    """The namespace has never been written to."""


class VectorStore(Protocol):
    backend: Backend

    def write(self, namespace: str, upserts: Sequence[DocumentChunks], deletes: Sequence[str]) -> None:
        """In one step: replace the chunks of each upserted document, remove those of each deleted one."""
        ...

    def search(self, namespace: str, vector: Sequence[float], top_k: int) -> list[Hit]:
        """The top_k chunks nearest to the (normalized) vector, best first; score is cosine similarity."""
        ...

    def keyword_search(self, namespace: str, query: str, top_k: int) -> list[Hit]:
        """The top_k chunks by BM25 over their text and title, best first; score is the BM25 score."""
        ...

    def hybrid_search(self, namespace: str, query: str, vector: Sequence[float], top_k: int, alpha: float) -> list[Hit]:
        """Vector and keyword results fused by relative score: alpha 1 is vector only, 0 keyword only."""
        ...

    def count(self, namespace: str, document_id: str | None = None) -> int:
        """Chunks in the namespace, or of one document."""
        ...

    def namespaces(self) -> list[str]:
        """Every namespace that has an index."""
        ...

    def check(self) -> None:
        """Raise DependencyUnavailable when the store cannot be used now (readiness)."""
        ...

    def close(self) -> None: ...


def fuse(vector_hits: Sequence[Hit], keyword_hits: Sequence[Hit], alpha: float, top_k: int) -> list[Hit]:
    """Relative score fusion (as Weaviate's `relativeScoreFusion`): each list's scores are scaled to [0, 1]
    by min-max, then summed with weights alpha (vector) and 1 - alpha (keyword). Best first."""
    combined: dict[str, float] = {}
    hits: dict[str, Hit] = {}
    for weight, ranked in ((alpha, vector_hits), (1.0 - alpha, keyword_hits)):
        if not ranked:
            continue
        high, low = max(h.score for h in ranked), min(h.score for h in ranked)
        for hit in ranked:
            scaled = (hit.score - low) / (high - low) if high > low else 1.0
            combined[hit.chunk_id] = combined.get(hit.chunk_id, 0.0) + weight * scaled
            hits.setdefault(hit.chunk_id, hit)
    ranked_ids = sorted(combined, key=lambda chunk: combined[chunk], reverse=True)[:top_k]
    return [replace(hits[chunk], score=combined[chunk]) for chunk in ranked_ids]


def open_vector_store(settings: VectorStoreSettings, weaviate: WeaviateSettings | None = None) -> VectorStore:
    if settings.backend is Backend.WEAVIATE:
        from ragtrace.vectorstore.weaviate_store import WeaviateStore

        return WeaviateStore(weaviate or WeaviateSettings(), settings.weaviate_collection)
    from ragtrace.vectorstore.faiss_store import FaissStore

    return FaissStore(settings.data_dir)
