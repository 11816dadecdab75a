"""One small vector-store interface with two real backends: embedded FAISS (default) and Weaviate.

Every namespace is its own store (a FAISS/SQLite file, a Weaviate tenant): one can never read another's; a
re-index builds a new one beside it, and switches to it when it is complete (generations.py).
Writes are idempotent: `write` replaces all of a document's chunks, keyed by deterministic chunk ids.
The index also knows the content hash each document's chunks come from, which is how the indexer finds
duplicate content in a namespace without any other lookup.
Each namespace records the embedding model its vectors come from (`embedding_model`), so that a search never
compares vectors of two models: a write of another model's vectors into a namespace that still holds chunks,
and a query embedded with another model, are refused with ModelMismatch naming both.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ragtrace.errors import ModelMismatch
from ragtrace.settings import WeaviateSettings

if TYPE_CHECKING:
    from ragtrace.vectorstore.generations import GenerationalStore

Item = TypeVar("Item", bound=Hashable)

# Candidates each retriever contributes to a hybrid fusion (at least; more for a larger top_k).
HYBRID_CANDIDATES = 50
# Reciprocal rank fusion's constant: the value of its paper (Cormack et al., 2009), fixed in Weaviate too.
RRF_K = 60
# Chunks pseudo-relevance feedback reads in hybrid search; ANCE-PRF's best depth (Yu et al., 2021).
FEEDBACK_CHUNKS = 3
# FAISS backend: from this many chunks on a namespace is searched approximately. Measured with `make
# bench-scale` (docs/benchmarks.md, scale): at 10k chunks exact dense search alone (hybrid runs two) already
# takes the whole 50 ms p99 budget at concurrency 8 on 2 cores, IVF 5-10x less at recall@10 >= 0.95, built in
# about a second; below it exact search costs a few ms and an IVF of under 100 cells gains little.
APPROXIMATE_ABOVE = 10_000
# Recall@10 against exact search that the approximate index's nprobe is calibrated to reach on sample queries;
# above 0.95 to leave a margin for queries unlike them (`make bench-scale` measures it on others: >= 0.95).
APPROXIMATE_RECALL = 0.98


class Backend(StrEnum):
    FAISS = "faiss"
    WEAVIATE = "weaviate"


class VectorStoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_INDEX_", extra="ignore", frozen=True)

    backend: Backend = Backend.FAISS
    data_dir: Path = Path(".state/index")  # FAISS backend: one SQLite file per namespace
    weaviate_collection: str = "RagtraceChunk"
    # Hybrid search: chunks whose vectors expand the query vector (docs/evaluation.md); 0: no feedback.
    feedback_chunks: int = Field(FEEDBACK_CHUNKS, ge=0)
    # FAISS backend: chunks above which a namespace is searched approximately (IVF), and the recall@10
    # against exact search its nprobe is calibrated for (faiss_index.py; docs/benchmarks.md, scale).
    approximate_above: int = Field(APPROXIMATE_ABOVE, ge=0)
    approximate_recall: float = Field(APPROXIMATE_RECALL, gt=0, le=1)


@dataclass(frozen=True)
class IndexedChunk:
    chunk_id: str
    chunk_no: int
    content: str
    start: int
    end: int
    vector: Sequence[float]


@dataclass(frozen=True)
class Provenance:
    """How a document's chunks got into the index, kept beside them so that a search's sources say it
    without another lookup: the trace and span of the request that ingested it (W3C hex), when the index
    write happened (ISO 8601, UTC), the embedding model and the pipeline's version (ragtrace's)."""

    trace_id: str = ""
    span_id: str = ""
    indexed_at: str = ""
    model: str = ""
    pipeline_version: str = ""


@dataclass(frozen=True)
class DocumentChunks:
    document_id: str
    metadata: Mapping[str, Any]
    chunks: Sequence[IndexedChunk]
    model: str | None = None  # the embedding model of the vectors (ChunkBatch.model)
    content_hash: str | None = None  # of the text the chunks come from: duplicates are found by it
    provenance: Provenance = field(default_factory=Provenance)


@dataclass(frozen=True)
class EmbeddingModel:
    """The model a namespace's vectors come from, and their dimension."""

    name: str
    dimension: int

    def __str__(self) -> str:
        return f"'{self.name}' (dimension {self.dimension})"


def written_model(namespace: str, upserts: Sequence[DocumentChunks]) -> EmbeddingModel | None:
    """The one embedding model of the chunks a write brings (None when none is named)."""
    models = {
        EmbeddingModel(document.model, len(document.chunks[0].vector))
        for document in upserts
        if document.model is not None and document.chunks
    }
    if len(models) > 1:
        first, second = sorted(models, key=str)[:2]
        raise ModelMismatch(namespace, str(first), str(second))
    return next(iter(models), None)


def check_model(namespace: str, indexed: EmbeddingModel | None, given: EmbeddingModel | None) -> None:
    """ModelMismatch, naming both, when vectors of `given` would meet a namespace holding `indexed`'s."""
    if indexed is not None and given is not None and indexed != given:
        raise ModelMismatch(namespace, str(indexed), str(given))


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    document_id: str
    content: str
    score: float
    metadata: Mapping[str, Any] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)


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
        """Vector and keyword results fused by weighted reciprocal rank (`fused_ranking`), the vector side
        searched with the query expanded by pseudo-relevance feedback: alpha 1 is vector only, 0 keyword only."""
        ...

    def count(self, namespace: str, document_id: str | None = None) -> int:
        """Chunks in the namespace, or of one document."""
        ...

    def embedding_model(self, namespace: str) -> EmbeddingModel | None:
        """The model whose vectors the namespace holds, as `write` recorded it; None when it holds none."""
        ...

    def documents_with_content(self, namespace: str, content_hash: str) -> list[str]:
        """The documents whose chunks in the namespace come from text with this content hash, sorted."""
        ...

    def namespaces(self) -> list[str]:
        """Every namespace that has an index."""
        ...

    def check(self) -> None:
        """Raise DependencyUnavailable when the store cannot be used now (readiness)."""
        ...

    def close(self) -> None: ...


def rank_fusion(rankings: Sequence[Sequence[Item]], weights: Sequence[float]) -> dict[Item, float]:
    """Weighted reciprocal rank fusion, computed as Weaviate's `rankedFusion` does: an item scores the sum of
    weight / (RRF_K + rank) over the rankings it appears in, rank counted from 0; a ranking of weight 0 is
    left out. Item → score, best first. Ranks, not scores: no assumption about how either retriever's scores
    are distributed, which is what varies from one collection and one query to the next."""
    scores: dict[Item, float] = {}
    for weight, ranking in zip(weights, rankings, strict=True):
        if weight > 0:
            for rank, item in enumerate(ranking):
                scores[item] = scores.get(item, 0.0) + weight / (RRF_K + rank)
    return dict(sorted(scores.items(), key=lambda pair: pair[1], reverse=True))


def fused_ranking(
    vector_ranking: Sequence[Item], keyword_ranking: Sequence[Item], alpha: float, top_k: int
) -> list[tuple[Item, float]]:
    """Hybrid's result: the top_k of rank fusion with weights alpha (vector) and 1 - alpha (keyword), with
    their fused scores."""
    return list(rank_fusion([vector_ranking, keyword_ranking], [alpha, 1.0 - alpha]).items())[:top_k]


def feedback_ids(vector_ranking: Sequence[Item], keyword_ranking: Sequence[Item], count: int) -> list[Item]:
    """The chunks pseudo-relevance feedback reads: the top `count` of both rankings fused with equal weights,
    the chunks both retrievers rank high (parameter-free: no alpha, no score scale)."""
    return list(rank_fusion([vector_ranking, keyword_ranking], [1.0, 1.0]))[:count]


def expanded_query(vector: Sequence[float], feedback: np.ndarray) -> list[float]:
    """Rocchio's feedback on a dense query (as in ANCE-PRF): the query plus the centroid of the feedback
    chunks' vectors, weighted 1:1, normalized again for cosine. No feedback: the query unchanged."""
    if not len(feedback):
        return list(vector)
    expanded = np.asarray(vector, dtype=np.float32) + feedback.mean(axis=0)
    norm = float(np.linalg.norm(expanded))
    return [float(x) for x in expanded / norm] if norm > 0 else list(vector)


def open_vector_store(settings: VectorStoreSettings, weaviate: WeaviateSettings | None = None) -> GenerationalStore:
    from ragtrace.vectorstore.generations import GenerationalStore

    if settings.backend is Backend.WEAVIATE:
        from ragtrace.vectorstore.weaviate_store import WeaviateStore

        return GenerationalStore(
            WeaviateStore(weaviate or WeaviateSettings(), settings.weaviate_collection, settings.feedback_chunks)
        )
    from ragtrace.vectorstore.faiss_index import IndexPolicy
    from ragtrace.vectorstore.faiss_store import FaissStore

    policy = IndexPolicy(settings.approximate_above, settings.approximate_recall)
    return GenerationalStore(FaissStore(settings.data_dir, settings.feedback_chunks, policy))
