"""One small vector-store interface with two real backends: embedded FAISS (default) and Weaviate.

Every namespace is its own store (a FAISS/SQLite file, a Weaviate tenant): one can never read another's.
Writes are idempotent: `write` replaces all of a document's chunks, keyed by deterministic chunk ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic_settings import BaseSettings, SettingsConfigDict

from ragtrace.settings import WeaviateSettings


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

    def count(self, namespace: str, document_id: str | None = None) -> int:
        """Chunks in the namespace, or of one document."""
        ...

    def close(self) -> None: ...


def open_vector_store(settings: VectorStoreSettings, weaviate: WeaviateSettings | None = None) -> VectorStore:
    if settings.backend is Backend.WEAVIATE:
        from ragtrace.vectorstore.weaviate_store import WeaviateStore

        return WeaviateStore(weaviate or WeaviateSettings(), settings.weaviate_collection)
    from ragtrace.vectorstore.faiss_store import FaissStore

    return FaissStore(settings.data_dir)
