"""Embedding worker: documents topic → chunk → embed (one batch across documents) → chunks topic.

Stateless: each upsert event carries its version's text, and whether the event still owns its document is
decided by the indexer before it writes (ragtrace/lifecycle.py), so this worker never reads MinIO.

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
from ragtrace.messaging import (
    Batch,
    CurrentBatch,
    Publisher,
    batch_subscriber,
    new_broker,
)
from ragtrace.metrics import CHUNKS_PROCESSED, DOCUMENTS_PROCESSED, NAMESPACE_EMBEDDING_SECONDS
from ragtrace.runtime import document_store, run_worker, worker_app
from ragtrace.schemas import (
    Chunk,
    ChunkBatch,
    DocumentEvent,
    EventType,
    chunk_id,
    message_key,
)
from ragtrace.settings import KafkaSettings
from ragtrace.telemetry import record_batch_share

tracer = trace.get_tracer("ragtrace.embedding")
GROUP = "embedding"  # the consumer group, after the deployment's group prefix


@dataclass
class _Prepared:
    event: DocumentEvent
    span: trace.Span
    chunks: Sequence[TextChunk] = ()  # none: a deletion to forward


class Embedding:
    """The worker's use case: a batch of document events becomes one chunk batch per document."""

    def __init__(self, kafka: KafkaSettings, engine: EmbeddingEngine, chunks: Publisher) -> None:
        self.kafka = kafka
        self.engine = engine
        self.chunks = chunks

    async def handle(self, events: Sequence[DocumentEvent], delivered: Batch) -> None:
        prepared: list[_Prepared] = []
        for index, event in enumerate(events):
            span = delivered.span(index)
            try:
                with trace.use_span(span, end_on_exit=False):
                    prepared.append(self._prepare(event, span))
            except Exception as error:  # this message's own failure: retried, then dead-lettered
                delivered.fail(index, error)
        await self._embed_and_publish(prepared)

    def _prepare(self, event: DocumentEvent, span: trace.Span) -> _Prepared:
        span.set_attributes(
            {
                "document.id": event.document_id,
                "ragtrace.namespace": event.namespace,
                "ragtrace.event.type": event.type.value,
            }
        )
        if event.type is EventType.DELETE:
            return _Prepared(event, span)
        if event.text is None:
            raise ValueError("an upsert event without its text")
        with tracer.start_as_current_span("chunk") as chunk_span:
            chunks = self.engine.chunk(event.text)
            chunk_span.set_attributes(
                {"ragtrace.chunk.count": len(chunks), "ragtrace.chunk.tokens": self.engine.chunk_tokens}
            )
        return _Prepared(event, span, chunks)

    async def _embed_and_publish(self, prepared: list[_Prepared]) -> None:
        upserts = [p for p in prepared if p.event.type is EventType.UPSERT]
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
        _count_embedding_cost(upserts, (end_ns - start_ns) / 1e9)
        batches, row = [], 0
        for item in prepared:
            batches.append(self._chunk_batch(item, vectors[row : row + len(item.chunks)].tolist(), start_ns, end_ns))
            row += len(item.chunks)
        # All handed to the producer at once and acknowledged under one deadline: the producer sends them
        # together, rather than one broker round trip after another while the model waits for the next batch.
        refused = await self.chunks.publish_each(
            self.kafka.chunks_topic,
            [
                (message_key(item.event.namespace, item.event.document_id), chunks, item.span)
                for item, chunks in zip(prepared, batches, strict=True)
            ],
        )
        for error in refused:
            if error is not None:
                raise error  # Kafka is down: the whole batch is retried
        for chunks in batches:
            DOCUMENTS_PROCESSED.labels("embedding", chunks.type.value).inc()
            CHUNKS_PROCESSED.labels("embedding").inc(len(chunks.chunks))

    def _chunk_batch(self, item: _Prepared, vectors: list[list[float]], start_ns: int, end_ns: int) -> ChunkBatch:
        event = item.event
        if event.type is EventType.DELETE:
            return ChunkBatch.of(event, [])
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
        return ChunkBatch.of(
            event,
            model=self.engine.model_name,
            dimension=self.engine.dimension,
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


def _count_embedding_cost(upserts: Sequence[_Prepared], seconds: float) -> None:
    """Each namespace's share of the batch's model time, by its documents' chunks (a tenant's cost)."""
    chunks = sum(len(p.chunks) for p in upserts)
    for item in upserts:
        if item.chunks:
            NAMESPACE_EMBEDDING_SECONDS.labels(item.event.namespace, "ingest").inc(seconds * len(item.chunks) / chunks)


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
    broker = new_broker(kafka)
    publisher = declare(broker, settings, kafka)
    embedding = Embedding(kafka, EmbeddingEngine(settings), publisher)
    return worker_app(
        broker,
        kafka,
        group=GROUP,
        model=DocumentEvent,
        dead_letters=publisher,
        store=document_store(),
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
