"""Indexer worker: chunks topic → vector store (FAISS or Weaviate) → document status `indexed` or `deleted`.

Run: `python -m indexer.worker`. Writes are idempotent (a document's chunks are replaced as a whole, under
deterministic ids), so redelivery after a crash or rebalance never duplicates a chunk. A re-index event's
chunks go into the generation it names alone, and leave the document's record as it is (ragtrace/reindex.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

from faststream import Context, FastStream
from faststream.kafka import KafkaBroker
from opentelemetry import trace
from opentelemetry.trace import Link
from prometheus_client import Gauge, Histogram
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio import Redis

from ragtrace.cache import bump_namespace
from ragtrace.clients import redis_client
from ragtrace.errors import DependencyUnavailable
from ragtrace.lifecycle import DocumentLifecycle, Owned
from ragtrace.messaging import (
    Batch,
    CurrentBatch,
    Publisher,
    batch_subscriber,
    new_broker,
)
from ragtrace.metrics import CHUNKS_PROCESSED, DOCUMENTS_PROCESSED, observe
from ragtrace.runtime import document_store, run_worker, worker_app
from ragtrace.schemas import ChunkBatch, DocumentState, DocumentStatus, EventType, utcnow
from ragtrace.settings import KafkaSettings, RedisSettings, WeaviateSettings
from ragtrace.storage import DocumentStore
from ragtrace.telemetry import RAGTRACE_VERSION, record_batch_share, skip_message
from ragtrace.vectorstore import (
    DocumentChunks,
    IndexedChunk,
    Provenance,
    VectorStoreSettings,
    open_vector_store,
)
from ragtrace.vectorstore.generations import GenerationalStore

tracer = trace.get_tracer("ragtrace.indexer")
GROUP = "indexer"  # the consumer group, after the deployment's group prefix

FRESHNESS = Histogram(
    "ragtrace_ingest_freshness_seconds",
    "From a document's acceptance by the ingest API to its chunks being searchable",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
INDEX_CHUNKS = Gauge("ragtrace_index_chunks", "Chunks in the index, per namespace", ["namespace", "backend"])


class IndexerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_INDEXER_", extra="ignore", frozen=True)

    max_batch: int = 256
    metrics_port: int = 9465


@dataclass
class _Item:
    index: int
    batch: ChunkBatch
    span: trace.Span
    owned: Owned
    duplicate_of: str | None = None  # another document in the namespace already holds this content


class Indexing:
    """The worker's use case: chunk batches become index writes, one per namespace, and final statuses."""

    def __init__(self, store: DocumentStore, index: GenerationalStore, cache: Redis[bytes]) -> None:
        self.lifecycle = DocumentLifecycle(store)
        self.index = index
        for namespace in index.namespaces():  # every namespace has its series from the start, not from its next write
            INDEX_CHUNKS.labels(namespace, index.backend.value).set(index.count(namespace))
        self.cache = cache

    async def handle(self, batches: Sequence[ChunkBatch], delivered: Batch) -> None:
        checks = await asyncio.gather(
            *(self._owned(chunks, delivered.span(index)) for index, chunks in enumerate(batches)),
            return_exceptions=True,
        )
        by_namespace: dict[str, list[_Item]] = defaultdict(list)
        for index, (batch, check) in enumerate(zip(batches, checks, strict=True)):
            if isinstance(check, DependencyUnavailable):
                raise check
            if isinstance(check, Exception):
                delivered.fail(index, check)
            elif isinstance(check, Owned):
                by_namespace[batch.namespace].append(_Item(index, batch, delivered.span(index), check))
        for namespace, items in by_namespace.items():
            owners = [i for i in items if i.batch.generation is None]
            if owners:
                await asyncio.to_thread(self._find_duplicates, namespace, owners)
                await self._write(namespace, owners, delivered)
            for generation in sorted({i.batch.generation for i in items if i.batch.generation is not None}):
                rebuilt = [i for i in items if i.batch.generation == generation]
                await self._rebuild(namespace, generation, rebuilt, delivered)

    async def _owned(self, batch: ChunkBatch, span: trace.Span) -> Owned | None:
        """The document's record, or None when a newer request about the document supersedes the batch."""
        span.set_attributes(
            {
                "document.id": batch.document_id,
                "ragtrace.namespace": batch.namespace,
                "ragtrace.event.type": batch.type.value,
                "ragtrace.chunk.count": len(batch.chunks),
            }
        )
        if batch.model is not None:
            span.set_attributes(
                {"ragtrace.embedding.model": batch.model, "ragtrace.embedding.dimension": batch.dimension or 0}
            )
        owned = await asyncio.to_thread(self.lifecycle.read_owned, batch)
        if owned is None:
            skip_message(span, "superseded by a newer request about the document")
        elif batch.generation is not None and owned.record.status.status is not DocumentState.INDEXED:
            skip_message(span, "not indexed (yet): the owner's own event takes it into the new generation")
            return None
        return owned

    def _find_duplicates(self, namespace: str, items: list[_Item]) -> None:
        """Mark each upsert whose content another document of the namespace holds, in the index or earlier in
        this batch; the first holder is the original."""
        held: dict[str, str] = {}
        for item in items:
            digest = item.batch.content_hash
            if item.batch.type is not EventType.UPSERT or not digest:
                continue
            holders = [d for d in self.index.documents_with_content(namespace, digest) if d != item.batch.document_id]
            item.duplicate_of = holders[0] if holders else held.get(digest)
            if item.duplicate_of is None:
                held.setdefault(digest, item.batch.document_id)
            else:
                item.span.set_attribute("ragtrace.duplicate_of", item.duplicate_of)

    async def _write(self, namespace: str, items: list[_Item], delivered: Batch) -> None:
        indexed = [i for i in items if i.batch.type is EventType.UPSERT and i.duplicate_of is None]
        indexed_at = utcnow().isoformat()
        upserts = [_document_chunks(i.batch, i.owned.record.status, indexed_at) for i in indexed]
        # A duplicate's earlier chunks go, as a deleted document's do.
        deletes = [i.batch.document_id for i in items if i.batch.type is EventType.DELETE or i.duplicate_of]
        if not await self._index_write(namespace, items, upserts, delivered, self.index.write, upserts, deletes):
            return
        await bump_namespace(self.cache, namespace)  # cached results of this namespace are stale now
        size = await asyncio.to_thread(self.index.count, namespace)
        INDEX_CHUNKS.labels(namespace, self.index.backend.value).set(size)
        await asyncio.gather(*(self._record_outcome(item) for item in items))

    async def _rebuild(self, namespace: str, generation: int, items: list[_Item], delivered: Batch) -> None:
        """Re-index events: their chunks into `generation` alone (nothing written when its re-index is over;
        nothing searches it until it serves, so the cache stays); each document's record is left as it is."""
        indexed_at = utcnow().isoformat()
        upserts = [_document_chunks(i.batch, i.owned.record.status, indexed_at) for i in items]
        write = self.index.write_generation
        if await self._index_write(namespace, items, upserts, delivered, write, generation, upserts):
            for item in items:
                DOCUMENTS_PROCESSED.labels("indexer", "reindex").inc()
                CHUNKS_PROCESSED.labels("indexer").inc(len(item.batch.chunks))

    async def _index_write(
        self,
        namespace: str,
        items: list[_Item],
        upserts: list[DocumentChunks],
        delivered: Batch,
        write: Callable[..., object],
        *arguments: object,
    ) -> bool:
        """One write into the index for the items, traced, with each item's share of it; False when it failed
        (each item then fails: retried, then dead-lettered)."""
        start_ns = time.time_ns()
        try:
            with tracer.start_as_current_span(
                "index write",
                links=[Link(i.span.get_span_context()) for i in items],
                attributes={
                    "db.system.name": self.index.backend.value,
                    "ragtrace.namespace": namespace,
                    "ragtrace.batch.documents": len(items),
                    "ragtrace.batch.chunks": sum(len(d.chunks) for d in upserts),
                },
            ):
                await asyncio.to_thread(write, namespace, *arguments)
        except DependencyUnavailable:
            raise
        except Exception as error:
            for item in items:
                delivered.fail(item.index, error)
            return False
        end_ns = time.time_ns()
        for item in items:
            record_batch_share(
                tracer,
                "index write",
                item.span,
                start_ns,
                end_ns,
                {"db.system.name": self.index.backend.value, "ragtrace.chunk.count": len(item.batch.chunks)},
            )
        return True

    async def _record_outcome(self, item: _Item) -> None:
        batch = item.batch
        DOCUMENTS_PROCESSED.labels("indexer", batch.type.value).inc()
        CHUNKS_PROCESSED.labels("indexer").inc(len(batch.chunks))
        if batch.type is EventType.DELETE:
            await asyncio.to_thread(self.lifecycle.settle, batch, item.owned, DocumentState.DELETED, chunks=0)
        elif item.duplicate_of is not None:
            await asyncio.to_thread(
                self.lifecycle.settle,
                batch,
                item.owned,
                DocumentState.DUPLICATE,
                chunks=0,
                error=None,
                duplicate_of=item.duplicate_of,
            )
        else:
            indexed_at = utcnow()
            await asyncio.to_thread(
                self.lifecycle.settle,
                batch,
                item.owned,
                DocumentState.INDEXED,
                chunks=len(batch.chunks),
                error=None,
                duplicate_of=None,
                indexed_at=indexed_at,
            )
            observe(FRESHNESS, (indexed_at - batch.accepted_at).total_seconds(), item.span)

    async def close(self) -> None:
        await asyncio.to_thread(self.index.close)
        await self.cache.aclose()  # type: ignore[attr-defined]  # redis-py 5+ has it; types-redis lags


def _document_chunks(batch: ChunkBatch, status: DocumentStatus, indexed_at: str) -> DocumentChunks:
    """What the index keeps of a document: its chunks, and how they got in (the record names the request)."""
    return DocumentChunks(
        document_id=batch.document_id,
        metadata=batch.metadata,
        chunks=[IndexedChunk(c.chunk_id, c.chunk_no, c.text, c.start, c.end, c.vector) for c in batch.chunks],
        model=batch.model,
        content_hash=batch.content_hash,
        provenance=Provenance(
            trace_id=status.trace_id or "",
            span_id=status.span_id or "",
            indexed_at=indexed_at,
            model=batch.model or "",
            pipeline_version=RAGTRACE_VERSION,
        ),
    )


def declare(broker: KafkaBroker, settings: IndexerSettings, kafka: KafkaSettings) -> Publisher:
    """The worker's topics on `broker`: a batch subscriber on the chunks topic and the publisher of its dead
    letters (also what the AsyncAPI document describes)."""
    dead_letters = Publisher(broker, kafka, timeout_s=30.0, creates_topics=False)
    dead_letters.declare(
        kafka.dead_letter_topic(kafka.chunks_topic),
        ChunkBatch,
        "Chunk batches that failed every attempt, with ragtrace.error.* headers",
    )

    @batch_subscriber(
        broker,
        kafka,
        kafka.chunks_topic,
        kafka.group_prefix + GROUP,
        settings.max_batch,
        "Chunk batches, written to the index",
    )
    async def index_chunks(
        batches: list[ChunkBatch], delivered: CurrentBatch, work: Annotated[Indexing, Context("indexing")]
    ) -> None:
        await work.handle(batches, delivered)

    return dead_letters


def create_app(settings: IndexerSettings, kafka: KafkaSettings) -> FastStream:
    store = document_store()
    broker = new_broker(kafka)
    dead_letters = declare(broker, settings, kafka)
    index = open_vector_store(VectorStoreSettings(), WeaviateSettings())
    indexing = Indexing(store, index, redis_client(RedisSettings()))
    return worker_app(
        broker,
        kafka,
        group=GROUP,
        model=ChunkBatch,
        dead_letters=dead_letters,
        store=store,
        use_case=("indexing", indexing),
        after_shutdown=[indexing.close],
    )


def main() -> None:
    settings = IndexerSettings()
    run_worker("indexer-worker", lambda: create_app(settings, KafkaSettings()), settings.metrics_port)


if __name__ == "__main__":
    main()
