"""How every ragtrace process starts: logging, telemetry, metrics endpoint, and (for workers) the consumer loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

import grpc
from opentelemetry import trace
from prometheus_client import start_http_server

from ragtrace.clients import minio_client
from ragtrace.schemas import DocumentRef, DocumentState
from ragtrace.settings import KafkaSettings, MinioSettings
from ragtrace.storage import DocumentStore
from ragtrace.telemetry import extract_context, messaging_attributes, setup_telemetry
from ragtrace.worker import BatchHandler, KafkaWorker, Record, WorkerOptions


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("RAGTRACE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def document_store() -> DocumentStore:
    settings = MinioSettings()
    return DocumentStore(minio_client(settings), settings.bucket)


async def mark_failed(store: DocumentStore, record: Record, error: Exception) -> None:
    """Give the document of a dead-lettered message the status failed, with the error. Both topics' events
    carry namespace, document_id and ingest_id, which is all this reads."""
    try:
        event = DocumentRef.model_validate_json(record.value or b"")
    except ValueError:
        return  # undecodable: no document to mark
    await asyncio.to_thread(
        store.update_status,
        event.namespace,
        event.document_id,
        event.ingest_id,
        status=DocumentState.FAILED,
        error=f"{type(error).__name__}: {error}",
    )


def worker_span(tracer: trace.Tracer, record: Record, group: str) -> trace.Span:
    """The processing span of one consumed message: a child of the producer's context in its headers."""
    return tracer.start_span(
        f"process {record.topic}",
        context=extract_context(record.headers),
        kind=trace.SpanKind.CONSUMER,
        attributes=messaging_attributes(
            record.topic, "process", group=group, partition=record.partition, offset=record.offset, key=record.key
        ),
    )


def stop_on_signal(server: grpc.aio.Server, grace_s: float = 5.0) -> None:
    """SIGTERM/SIGINT: stop taking calls, let those in flight finish (up to grace_s), then return."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(server.stop(grace_s)))


def run_worker(
    service: str,
    kafka: KafkaSettings,
    options: WorkerOptions,
    handler_factory: Callable[[], BatchHandler],
    metrics_port: int,
) -> None:
    """Run one worker process until SIGTERM/SIGINT, then finish the batch in flight, commit and exit."""
    setup_logging()
    provider = setup_telemetry(service)

    async def main() -> None:
        handler = handler_factory()  # loads models, opens stores: /metrics answers once this is done
        start_http_server(metrics_port, addr=os.environ.get("RAGTRACE_METRICS_HOST", "127.0.0.1"))
        worker = KafkaWorker(kafka, options, handler)
        worker.install_signal_handlers()
        await worker.run()

    try:
        asyncio.run(main())
    finally:
        provider.shutdown()
