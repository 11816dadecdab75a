"""Stand-ins for the unit tier's search tests: a search service over a real FAISS store in a temporary
folder, with a fixed query embedder, no cache and no LLM; and a gRPC servicer context that records aborts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np

from query.generation import Generator
from query.search import SearchService
from query.settings import LLMSettings, SearchSettings
from ragtrace.cache import CacheLookup, SearchCache
from ragtrace.vectorstore import DocumentChunks, IndexedChunk
from ragtrace.vectorstore.faiss_store import FaissStore

MODEL, DIMENSION = "test-model", 4


def unit(*values: float) -> list[float]:
    vector = np.asarray(values, dtype=np.float32)
    return [float(x) for x in vector / np.linalg.norm(vector)]


def document(document_id: str, text: str, model: str | None = MODEL, dimension: int = DIMENSION) -> DocumentChunks:
    vector = unit(*([1.0] * dimension))
    chunk = IndexedChunk(f"{document_id}:0", 0, text, 0, len(text), vector)
    return DocumentChunks(document_id, {"title": document_id.title()}, [chunk], model=model)


class FixedEmbedder:
    """Every query is the same vector, from `model`."""

    via = "fixed"

    def __init__(self, model: str = MODEL, dimension: int = DIMENSION) -> None:
        self.model = model
        self.dimension = dimension

    async def embed(self, text: str) -> np.ndarray:
        return np.asarray(unit(*([1.0] * self.dimension)), dtype=np.float32)

    async def check(self) -> None:
        return None


class NoCache(SearchCache):
    """A cache that never has anything (as when Redis is down), with no client at all."""

    def __init__(self) -> None:
        pass

    async def lookup(self, namespace: str, parameters: dict[str, Any] | None, embedding_key: str | None) -> CacheLookup:
        return CacheLookup()

    async def put(self, key: str | None, result: bytes | None, embedding: tuple[str, np.ndarray] | None = None) -> None:
        return None


def search_service(data_dir: Path, embedder: FixedEmbedder | None = None) -> SearchService:
    return SearchService(
        SearchSettings(embedding_target=""),
        FaissStore(data_dir),
        embedder or FixedEmbedder(),
        NoCache(),
        Generator(LLMSettings(base_url="")),
    )


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class AbortingContext:
    """What the servicer needs of grpc.aio.ServicerContext: abort, raising as gRPC's does."""

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, str]] = ()
    ) -> NoReturn:
        raise Aborted(code, details)
