"""Embedding worker: documents topic → download → chunk → embed (one batch across documents) → chunks topic.

Run: `python -m embedding.worker`. One consumer group; add processes to scale out (up to the partitions).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from faststream import Context, FastStream
from faststream.kafka import KafkaBroker
from opentelemetry import trace
from opentelemetry.trace import Link

from embedding.engine import EmbeddingEngine, TextChunk
from embedding.settings import EmbeddingSettings
from ragtrace.errors import DependencyUnavailable
from ragtrace.lifecycle import LIVE, DocumentLifecycle, owns
from ragtrace.messaging import (
    Batch,
    CurrentBatch,
    Publisher,
    batch_subscriber,
    new_broker,
)
from ragtrace.metrics import CHUNKS_PROCESSED, DOCUMENTS_PROCESSED
from ragtrace.runtime import document_store, run_worker, worker_app
from ragtrace.schemas import (
    Chunk,
    ChunkBatch,
    DocumentEvent,
    DocumentState,
    EventType,
    StoredDocument,
    chunk_id,
    message_key,
)
from ragtrace.settings import KafkaSettings
from ragtrace.storage import DocumentStore
from ragtrace.telemetry import record_batch_share, skip_message

tracer = trace.get_tracer("ragtrace.embedding")
GROUP = "embedding"  # the consumer group, after the deployment's group prefix


@dataclass
class _Prepared:
    index: int
    event: DocumentEvent
    span: trace.Span
    document: StoredDocument | None = None  # None: a deletion to forward
    chunks: Sequence[TextChunk] = ()


class Embedding:
    """The worker's use case: a batch of document events becomes one chunk batch per document."""

    def __init__(self, kafka: KafkaSettings, store: DocumentStore, engine: EmbeddingEngine, chunks: Publisher) -> None:
        self.kafka = kafka
        self.store = store
        self.lifecycle = DocumentLifecycle(store)
        self.engine = engine
        self.chunks = chunks

    async def handle(self, events: Sequence[DocumentEvent], delivered: Batch) -> None:
        # The documents of a batch are prepared concurrently: mostly waiting on MinIO.
        outcomes = await asyncio.gather(
            *(self._prepare_traced(index, event, delivered.span(index)) for index, event in enumerate(events)),
            return_exceptions=True,
        )
        prepared: list[_Prepared] = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, DependencyUnavailable):
                raise outcome
            if isinstance(outcome, Exception):  # this message's own failure: retried, then dead-lettered
                delivered.fail(index, outcome)
            elif isinstance(outcome, _Prepared):
                prepared.append(outcome)
        await self._embed_and_publish(prepared, delivered)

    async def _prepare_traced(self, index: int, event: DocumentEvent, span: trace.Span) -> _Prepared | None:
        with trace.use_span(span, end_on_exit=False):
            return await self._prepare(index, event, span)

    async def _prepare(self, index: int, event: DocumentEvent, span: trace.Span) -> _Prepared | None:
        span.set_attributes(
            {
                "document.id": event.document_id,
                "ragtrace.namespace": event.namespace,
                "ragtrace.event.type": event.type.value,
            }
        )
        status = await asyncio.to_thread(self.lifecycle.status, event.namespace, event.document_id)
        if not owns(status, event):
            skip_message(span, "superseded by a newer request about the document")
            return None
        if event.type is EventType.DELETE:
            return _Prepared(index, event, span)
        with tracer.start_as_current_span("download document") as download:
            document = await asyncio.to_thread(self.lifecycle.read_version, event, event.key or status.key or "")
            download.set_attribute("ragtrace.found", document is not None)
        if document is None:
            skip_message(span, "superseded by a newer version of the document")
            return None
        await asyncio.to_thread(self.lifecycle.transition, event, DocumentState.PROCESSING)
        owner = await asyncio.to_thread(self.store.hash_owner, event.namespace, document.content_hash)
        if owner and owner != event.document_id and await self._owns_content(event.namespace, owner, document):
            span.set_attribute("ragtrace.duplicate_of", owner)
            await asyncio.to_thread(self.lifecycle.transition, event, DocumentState.DUPLICATE, duplicate_of=owner)
            # Remove chunks of any earlier version of this document; its status stays "duplicate".
            return _Prepared(index, event.model_copy(update={"type": EventType.DELETE}), span)
        if owner != event.document_id:
            await asyncio.to_thread(self.store.claim_hash, event.namespace, document.content_hash, event.document_id)
        with tracer.start_as_current_span("chunk") as chunk_span:
            chunks = self.engine.chunk(document.text)
            chunk_span.set_attributes(
                {"ragtrace.chunk.count": len(chunks), "ragtrace.chunk.tokens": self.engine.chunk_tokens}
            )
        return _Prepared(index, event, span, document, chunks)

    async def _owns_content(self, namespace: str, owner: str, document: StoredDocument) -> bool:
        status = await asyncio.to_thread(self.lifecycle.status, namespace, owner)
        return status is not None and status.status in LIVE and status.content_hash == document.content_hash

    async def _embed_and_publish(self, prepared: list[_Prepared], delivered: Batch) -> None:
        upserts = [p for p in prepared if p.document is not None]
        texts = [c.text for p in upserts for c in p.chunks]
        start_ns = time.time_ns()
        with tracer.start_as_current_span(
            "embed batch",
            links=[Link(p.span.get_span_context()) for p in upserts],
            attributes={
                "ragtrace.batch.documents": len(upserts),
                "ragtrace.batch.chunks": len(texts),
                "ragtrace.embedding.model": self.engine.model_name,
                "ragtrace.embedding.device": self.engine.device,
            },
        ):
            vectors = await asyncio.to_thread(self.engine.embed, texts)
        end_ns = time.time_ns()
        row = 0
        for item in prepared:
            chunks = self._chunk_batch(item, vectors[row : row + len(item.chunks)].tolist(), start_ns, end_ns)
            row += len(item.chunks)
            try:
                with trace.use_span(item.span, end_on_exit=False):
                    key = message_key(item.event.namespace, item.event.document_id)
                    await self.chunks.publish(self.kafka.chunks_topic, key, chunks)
            except DependencyUnavailable:
                raise
            except Exception as error:
                delivered.fail(item.index, error)
                continue
            DOCUMENTS_PROCESSED.labels("embedding", chunks.type.value).inc()
            CHUNKS_PROCESSED.labels("embedding").inc(len(chunks.chunks))

    def _chunk_batch(self, item: _Prepared, vectors: list[list[float]], start_ns: int, end_ns: int) -> ChunkBatch:
        event = item.event
        if item.document is None:
            return ChunkBatch(
                type=EventType.DELETE,
                document_id=event.document_id,
                namespace=event.namespace,
                ingest_id=event.ingest_id,
                accepted_at=event.accepted_at,
            )
        record_batch_share(
            tracer,
            "embed",
            item.span,
            start_ns,
            end_ns,
            {
                "ragtrace.chunk.count": len(item.chunks),
                "ragtrace.embedding.model": self.engine.model_name,
                "ragtrace.embedding.dimension": self.engine.dimension,
            },
        )
        item.span.set_attribute("ragtrace.chunk.count", len(item.chunks))
        return ChunkBatch(
            type=EventType.UPSERT,
            document_id=event.document_id,
            namespace=event.namespace,
            ingest_id=event.ingest_id,
            content_hash=item.document.content_hash,
            metadata=item.document.metadata,
            model=self.engine.model_name,
            dimension=self.engine.dimension,
            accepted_at=event.accepted_at,
            chunks=[
                Chunk(
                    chunk_id=chunk_id(event.document_id, c.chunk_no),
                    chunk_no=c.chunk_no,
                    text=c.text,
                    start=c.start,
                    end=c.end,
                    vector=v,
                )
                for c, v in zip(item.chunks, vectors, strict=True)
            ],
        )


def declare(broker: KafkaBroker, settings: EmbeddingSettings, kafka: KafkaSettings) -> Publisher:
    """The worker's topics on `broker`: a batch subscriber on the documents topic and publishers of chunk
    batches and dead letters (also what the AsyncAPI document describes)."""
    # A chunk batch may wait for a broker that restarts; the batch is retried as a whole meanwhile.
    publisher = Publisher(broker, kafka, timeout_s=30.0, creates_topics=False)
    publisher.declare(kafka.chunks_topic, ChunkBatch, "One document's chunks and vectors, or its deletion")
    publisher.declare(
        kafka.dead_letter_topic(kafka.documents_topic),
        DocumentEvent,
        "Document events that failed every attempt, with ragtrace.error.* headers",
    )

    @batch_subscriber(
        broker,
        kafka,
        kafka.documents_topic,
        kafka.group_prefix + GROUP,
        settings.max_batch_documents,
        "Documents accepted by the ingest API, embedded in batches across documents",
    )
    async def embed_documents(
        events: list[DocumentEvent], delivered: CurrentBatch, work: Annotated[Embedding, Context("embedding")]
    ) -> None:
        await work.handle(events, delivered)

    return publisher


def create_app(settings: EmbeddingSettings, kafka: KafkaSettings) -> FastStream:
    store = document_store()
    broker = new_broker(kafka)
    publisher = declare(broker, settings, kafka)
    embedding = Embedding(kafka, store, EmbeddingEngine(settings), publisher)
    return worker_app(
        broker,
        kafka,
        group=GROUP,
        model=DocumentEvent,
        dead_letters=publisher,
        store=store,
        use_case=("embedding", embedding),
    )


def main() -> None:
    run_worker(
        "embedding-worker",
        lambda: create_app(EmbeddingSettings(), KafkaSettings()),
        EmbeddingSettings().metrics_port,
    )


if __name__ == "__main__":
    main()
