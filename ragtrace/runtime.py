"""How every ragtrace process starts: logging, telemetry, metrics endpoint, and (for workers) the consumer loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace
from prometheus_client import start_http_server
from pydantic import BaseModel

from ragtrace.clients import minio_client
from ragtrace.errors import PoisonMessage
from ragtrace.http import ReadinessCheck
from ragtrace.lifecycle import DocumentLifecycle
from ragtrace.metrics import GrpcMetrics
from ragtrace.schemas import DocumentRef, DocumentState
from ragtrace.settings import KafkaSettings, MinioSettings
from ragtrace.storage import DocumentStore
from ragtrace.telemetry import extract_context, messaging_attributes, setup_telemetry, skip_message, span_failed
from ragtrace.worker import BatchHandler, KafkaWorker, Record, WorkerOptions

ModelT = TypeVar("ModelT", bound=BaseModel)
log = logging.getLogger(__name__)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; inside a span it carries the span's trace_id and span_id, so a log line
    leads to its trace and a trace to its log lines."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": os.environ.get("OTEL_SERVICE_NAME", ""),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=os.environ.get("RAGTRACE_LOG_LEVEL", "INFO").upper(), handlers=[handler], force=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def document_store() -> DocumentStore:
    settings = MinioSettings()
    return DocumentStore(minio_client(settings), settings.bucket)


async def mark_failed(lifecycle: DocumentLifecycle, record: Record, error: Exception) -> None:
    """Give the document of a dead-lettered message the status failed, with the error. Both topics' events
    carry namespace, document_id and ingest_id, which is all this reads."""
    try:
        event = DocumentRef.model_validate_json(record.value or b"")
    except ValueError:
        return  # undecodable: no document to mark
    await set_status(lifecycle, event, DocumentState.FAILED, error=f"{type(error).__name__}: {error}")


async def set_status(lifecycle: DocumentLifecycle, ref: DocumentRef, state: DocumentState, **fields: object) -> bool:
    """Move the event's document to `state`, if the event's request still owns it."""
    return await asyncio.to_thread(lifecycle.transition, ref, state, **fields)


@contextlib.contextmanager
def processing_spans(tracer: trace.Tracer, records: Sequence[Record], group: str) -> Iterator[list[trace.Span]]:
    """One processing span per consumed message, each a child of the producer's context in its headers;
    all ended when the block exits, however it exits."""
    spans = [
        tracer.start_span(
            f"process {record.topic}",
            context=extract_context(record.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes=messaging_attributes(
                record.topic, "process", group=group, partition=record.partition, offset=record.offset, key=record.key
            ),
        )
        for record in records
    ]
    try:
        yield spans
    finally:
        for span in spans:
            span.end()


def parse_message(record: Record, model: type[ModelT], what: str) -> ModelT:
    """The record's value as `model`; anything else is a PoisonMessage, which no retry can fix."""
    try:
        return model.model_validate_json(record.value or b"")
    except ValueError as error:
        raise PoisonMessage(f"not {what}: {error}") from error


def last_per_document(events: Mapping[int, DocumentRef]) -> set[int]:
    """Of the parsed events of a batch (by record index), the indexes of each document's last one. A document's
    events arrive in order (same key, same partition), so its last event in a batch is the one that counts;
    acting on the earlier ones too, concurrently, could apply them out of order."""
    last: dict[tuple[str, str], int] = {}
    for index, event in sorted(events.items()):
        last[(event.namespace, event.document_id)] = index
    return set(last.values())


EventT = TypeVar("EventT", bound=DocumentRef)


def current_events(
    records: Sequence[Record],
    spans: Sequence[trace.Span],
    model: type[EventT],
    what: str,
    failures: dict[int, Exception],
) -> dict[int, EventT]:
    """The events of a batch to act on, by record index: each document's last one. Undecodable records go to
    `failures` as poison; earlier events of a document are acknowledged as superseded."""
    events: dict[int, EventT] = {}
    for index, (record, span) in enumerate(zip(records, spans, strict=True)):
        try:
            events[index] = parse_message(record, model, what)
        except PoisonMessage as error:
            failures[index] = span_failed(span, error)
    current = last_per_document(events)
    for index in set(events) - current:
        skip_message(spans[index], "superseded by a later event in the same batch")
    return {index: events[index] for index in sorted(current)}


async def start_grpc_server(
    name: str,
    address: str,
    metrics_port: int,
    add_servicer: Callable[[grpc.aio.Server], None],
    readiness: Mapping[str, ReadinessCheck] | None = None,
) -> grpc.aio.Server:
    """A started gRPC server with its servicer, request metrics, the health protocol, the Prometheus endpoint,
    and a graceful stop on SIGTERM/SIGINT. Health: the server ("") is SERVING while the process runs (for
    liveness); `name` is SERVING only while every `readiness` check passes (for readiness)."""
    server = grpc.aio.server(interceptors=[GrpcMetrics()])
    add_servicer(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(address)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await _update_readiness(health_servicer, name, readiness or {})
    watcher = asyncio.get_running_loop().create_task(_watch_readiness(health_servicer, name, readiness or {}))
    _background.add(watcher)  # keeps the task referenced for the life of the process
    start_http_server(metrics_port, addr=os.environ.get("RAGTRACE_METRICS_HOST", "127.0.0.1"))
    stop_on_signal(server)
    return server


_background: set[asyncio.Task[None]] = set()
READINESS_INTERVAL_S = 5.0


async def _update_readiness(
    health_servicer: health.aio.HealthServicer, name: str, checks: Mapping[str, ReadinessCheck]
) -> None:
    down = []
    for dependency, check in checks.items():
        try:
            await check()
        except Exception as error:
            down.append(f"{dependency} ({error})")
    if down:
        log.warning("%s not ready: %s unavailable", name, ", ".join(down))
    serving = health_pb2.HealthCheckResponse.NOT_SERVING if down else health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set(name, serving)


async def _watch_readiness(
    health_servicer: health.aio.HealthServicer, name: str, checks: Mapping[str, ReadinessCheck]
) -> None:
    while checks:
        await asyncio.sleep(READINESS_INTERVAL_S)
        await _update_readiness(health_servicer, name, checks)


def run_http_service(service: str, app: Callable[[], Any], host: str, port: int) -> None:
    """Run a FastAPI service under uvicorn with this process's logging and telemetry."""

    async def main() -> None:
        config = uvicorn.Config(app(), host=host, port=port, log_config=None)  # logs through our JSON handler
        await uvicorn.Server(config).serve()

    run_async_service(service, main)


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

    async def main() -> None:
        handler = handler_factory()  # loads models, opens stores: /metrics answers once this is done
        start_http_server(metrics_port, addr=os.environ.get("RAGTRACE_METRICS_HOST", "127.0.0.1"))
        worker = KafkaWorker(kafka, options, handler)
        worker.install_signal_handlers()
        await worker.run()

    run_async_service(service, main)


def run_async_service(service: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an asyncio service process with this project's logging and telemetry; spans are flushed on exit."""
    setup_logging()
    provider = setup_telemetry(service)
    try:
        asyncio.run(main())
    finally:
        provider.shutdown()
