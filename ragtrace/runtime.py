"""How every ragtrace process starts: logging, telemetry, metrics endpoint, and (for workers) the consumer loop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import grpc
import uvicorn
import uvloop
from faststream import FastStream
from faststream.kafka import KafkaBroker
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace
from prometheus_client import start_http_server

from ragtrace.clients import minio_client, minio_http
from ragtrace.http import ReadinessCheck
from ragtrace.lifecycle import DocumentLifecycle
from ragtrace.messaging import DeliveryPolicy, Publisher, ensure_topics
from ragtrace.metrics import GrpcMetrics, record_build
from ragtrace.reindex import ReindexJobs
from ragtrace.schemas import DocumentRef
from ragtrace.settings import KafkaSettings, MinioSettings
from ragtrace.storage import DocumentStore
from ragtrace.telemetry import instrument_all

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
    http = minio_http(settings)
    return DocumentStore(minio_client(settings, http), http, settings.bucket)


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


def run_http_service(service: str, app: Callable[[], Any], host: str, port: int, grpc_aio: bool = False) -> None:
    """Run a FastAPI service under uvicorn with this process's logging and telemetry (`grpc_aio`: see
    run_async_service)."""

    async def main() -> None:
        config = uvicorn.Config(app(), host=host, port=port, log_config=None)  # logs through our JSON handler
        await uvicorn.Server(config).serve()

    run_async_service(service, main, grpc_aio)


def stop_on_signal(server: grpc.aio.Server, grace_s: float = 5.0) -> None:
    """SIGTERM/SIGINT: stop taking calls, let those in flight finish (up to grace_s), then return."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(server.stop(grace_s)))


def worker_app(
    broker: KafkaBroker,
    kafka: KafkaSettings,
    *,
    group: str,
    model: type[DocumentRef],
    dead_letters: Publisher,
    store: DocumentStore,
    use_case: tuple[str, object],
    after_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
) -> FastStream:
    """A worker's FastStream application: its broker with the batch-delivery middleware (a dead-lettered
    event marks its document failed, or a re-index event its job's document), the topics created at start-up,
    and its use case in FastStream's context under the name its subscriber asks for."""
    lifecycle = DocumentLifecycle(store)
    jobs = ReindexJobs(store)

    async def mark_failed(ref: DocumentRef, error: Exception) -> None:
        if ref.generation is not None:  # a re-index event: its job fails the document, not its record
            await asyncio.to_thread(jobs.record_failure, ref, error)
        else:
            await asyncio.to_thread(lifecycle.fail, ref, error)

    broker.add_middleware(
        DeliveryPolicy(
            group=kafka.group_prefix + group,
            model=model,
            dead_letters=dead_letters,
            on_dead_letter=mark_failed,
        )
    )
    app = FastStream(
        broker,
        logger=None,
        on_startup=[partial(ensure_topics, kafka)],
        after_shutdown=[*after_shutdown, dead_letters.stop_producer],  # the broker stops all but the producer
    )
    app.context.set_global(*use_case)
    return app


def run_worker(service: str, app: Callable[[], FastStream], metrics_port: int) -> None:
    """Run one worker process (a FastStream application) until SIGTERM/SIGINT; the batch in flight is
    finished and committed before it exits."""

    async def main() -> None:
        worker = app()  # loads models, opens stores: /metrics answers once this is done
        start_http_server(metrics_port, addr=os.environ.get("RAGTRACE_METRICS_HOST", "127.0.0.1"))
        await worker.run()

    run_async_service(service, main)


def run_async_service(service: str, main: Callable[[], Coroutine[Any, Any, None]], grpc_aio: bool = False) -> None:
    """Run an asyncio service process with this project's logging and telemetry; spans are flushed on exit.
    Its event loop is uvloop's, as uvicorn picks for itself when it runs alone: each callback, socket event and
    thread hand-off costs less CPU than on asyncio's own loop. A process that uses grpc.aio (`grpc_aio`) keeps
    asyncio's loop, the one gRPC's asyncio support is built and tested on."""
    setup_logging()
    provider = instrument_all(service)
    record_build(provider.resource)
    try:
        if grpc_aio:
            asyncio.run(main())
        else:
            uvloop.run(main())
    finally:
        provider.shutdown()
