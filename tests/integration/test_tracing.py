"""One trace follows a document from POST /ingest through every process, read back from a real OTLP receiver."""

from __future__ import annotations

import uuid

from ragtrace.devstack.services import Services
from ragtrace.traces import SpanView, fetch_trace
from tests.pipeline import Pipeline, wait_until


def _path_to_root(span: SpanView, by_id: dict[str, SpanView]) -> list[SpanView]:
    path = [span]
    while path[-1].parent_span_id:
        path.append(by_id[path[-1].parent_span_id])
    return path


def test_one_trace_follows_a_document_through_every_process(faiss_pipeline: Pipeline, trace_store: Services) -> None:
    namespace = "trace-" + uuid.uuid4().hex[:8]
    accepted = faiss_pipeline.ingest("Seismographs record the motion of the ground.", namespace, "seismo")
    faiss_pipeline.wait_for(["seismo"], namespace)
    kafka = faiss_pipeline.kafka

    def complete() -> list[SpanView] | None:
        spans = fetch_trace(trace_store.trace_url, accepted["trace_id"])
        if spans and any(s.service == "indexer-worker" and s.name == "index write" for s in spans):
            return spans
        return None

    spans: list[SpanView] = wait_until(complete, 20, 0.3, "the indexer's spans in the trace store")
    by_id = {s.span_id: s for s in spans}

    assert {s.trace_id for s in spans} == {accepted["trace_id"]}
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1, "one tree"
    assert roots[0].service == "ingest-api" and roots[0].kind == "server" and roots[0].name == "POST /ingest"
    assert all(s.parent_span_id in by_id for s in spans if s.parent_span_id), "every parent is in the trace"

    index_write = next(s for s in spans if s.name == "index write" and s.service == "indexer-worker")
    chain = [(s.service, s.name) for s in _path_to_root(index_write, by_id)]
    assert chain == [
        ("indexer-worker", "index write"),
        ("indexer-worker", f"process {kafka.chunks_topic}"),
        ("embedding-worker", f"send {kafka.chunks_topic}"),
        ("embedding-worker", f"process {kafka.documents_topic}"),
        ("ingest-api", f"send {kafka.documents_topic}"),
        ("ingest-api", "POST /ingest"),
    ]
    names = {(s.service, s.name) for s in spans}
    assert {
        ("ingest-api", "upload document"),
        ("embedding-worker", "download document"),
        ("embedding-worker", "chunk"),
        ("embedding-worker", "embed"),
    } <= names

    consumer = next(s for s in spans if s.name == f"process {kafka.documents_topic}")
    assert consumer.kind == "consumer"
    assert consumer.attributes["messaging.system"] == "kafka"
    assert consumer.attributes["messaging.destination.name"] == kafka.documents_topic
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.consumer.group.name"] == kafka.group_prefix + "embedding"
    assert "messaging.destination.partition.id" in consumer.attributes
    assert isinstance(consumer.attributes["messaging.kafka.offset"], int)
    assert consumer.attributes["document.id"] == "seismo"
    assert consumer.attributes["ragtrace.namespace"] == namespace
    producer = next(s for s in spans if s.name == f"send {kafka.documents_topic}")
    assert producer.kind == "producer" and producer.attributes["messaging.operation.type"] == "send"
    embed = next(s for s in spans if s.name == "embed")
    assert embed.attributes["ragtrace.chunk.count"] == 1
    assert embed.attributes["ragtrace.embedding.model"] == "all-MiniLM-L6-v2"
    assert embed.attributes["ragtrace.embedding.dimension"] == 384
