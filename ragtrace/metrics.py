"""The Prometheus metrics every ragtrace process shares: requests (HTTP and gRPC) and the consumer loop.

Each service's own metrics live beside the code that measures them (embedding/engine.py, indexer/worker.py,
query/search.py, query/generation.py, ragtrace/cache.py); docs/observability.md lists all of them in one table.
Latency histograms carry the current trace id as an exemplar (exposed in the OpenMetrics format, which
Prometheus asks for), so a slow bucket in Grafana leads to one of its traces.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from prometheus_client import Counter, Gauge, Histogram, Info
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragtrace.telemetry import trace_id_hex

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Health checks and scrapes are not traffic: neither counted nor traced, or they would drown the requests that
# matter (ragtrace/http.py passes the same paths to the FastAPI instrumentation).
OPERATIONS_PATHS = ("/metrics", "/healthz", "/readyz")
GRPC_HEALTH = "/grpc.health.v1.Health/"

REQUESTS = Counter(
    "ragtrace_requests", "Requests served, by protocol, endpoint and status", ["protocol", "endpoint", "status"]
)
REQUEST_DURATION = Histogram(
    "ragtrace_request_duration_seconds",
    "Time to serve a request (to the last byte of a streamed response)",
    ["protocol", "endpoint", "status"],
    buckets=LATENCY_BUCKETS,
)
WORKER_MESSAGES = Counter(
    "ragtrace_worker_messages", "Consumed messages by outcome: processed, retried, dead_lettered", ["topic", "outcome"]
)
DEAD_LETTERS = Counter(
    "ragtrace_dead_letter_messages",
    "Messages sent to the dead-letter topic, by source topic and error type",
    ["topic", "error"],
)
CONSUMER_LAG = Gauge(
    "ragtrace_consumer_lag",
    "Messages behind the partition's end, as the worker's consumer sees it",
    ["topic", "partition", "group"],
)
WORKER_BATCH_SIZE = Histogram(
    "ragtrace_worker_batch_size",
    "Messages per consumed batch",
    ["topic"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
WORKER_BATCH_DURATION = Histogram(
    "ragtrace_worker_batch_duration_seconds",
    "Time to process and commit one consumed batch",
    ["topic"],
    buckets=LATENCY_BUCKETS,
)
WORKER_IN_FLIGHT = Gauge(
    "ragtrace_worker_messages_in_flight",
    "Messages a worker has taken from Kafka and not finished yet (their batch is being handled)",
    ["topic"],
)
DOCUMENTS_PROCESSED = Counter(
    "ragtrace_documents_processed",
    "Documents a worker acted on, by stage (embedding, indexer) and event type (upsert, delete)",
    ["stage", "type"],
)
CHUNKS_PROCESSED = Counter("ragtrace_chunks_processed", "Chunks embedded or written to the index, by stage", ["stage"])
# A tenant's cost: what its namespace used, counted where it is used (the search service, the embedding worker).
NAMESPACE_TOKENS = Counter(
    "ragtrace_namespace_tokens",
    "LLM tokens used for a namespace's answers, by kind (prompt, completion)",
    ["namespace", "kind"],
)
NAMESPACE_EMBEDDING_SECONDS = Counter(
    "ragtrace_namespace_embedding_seconds",
    "Model time spent embedding a namespace's text, by stage (ingest: its documents' chunks, query: its questions)",
    ["namespace", "stage"],
)
# The process's identity as labels (its trace resource's service.name and service.version): joined on job and
# instance, any series breaks down by version, which is how the rollout-regression alerts compare versions.
BUILD = Info("ragtrace_build", "This process: its service name and ragtrace version")


def record_build(resource: Resource) -> None:
    """ragtrace_build_info{service_name, service_version} 1, from the resource this process's spans carry."""
    attributes = resource.attributes
    BUILD.info({"service_name": str(attributes["service.name"]), "service_version": str(attributes["service.version"])})


def observe(histogram: Histogram, seconds: float, span: trace.Span | None = None) -> None:
    """Observe a latency with the trace id of `span` (or of the current span) as its exemplar."""
    trace_id = trace_id_hex(span)
    histogram.observe(seconds, exemplar={"trace_id": trace_id} if trace_id else None)


def record_request(protocol: str, endpoint: str, status: str, started: float) -> None:
    REQUESTS.labels(protocol, endpoint, status).inc()
    observe(REQUEST_DURATION.labels(protocol, endpoint, status), time.perf_counter() - started)


class HttpMetrics:
    """ASGI middleware: count and time each request under its route template (`/ingest/{document_id}`, never
    the raw path, so the label set stays bounded); paths no route matched count as `unmatched`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPERATIONS_PATHS):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            endpoint = f"{scope['method']} {getattr(route, 'path', 'unmatched')}"
            record_request("http", endpoint, str(status), started)


def _status(context: grpc.aio.ServicerContext, failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "UNKNOWN" if failed else "OK"


class GrpcMetrics(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio ships no stubs
    """Server interceptor: count and time each call by method and status code (unary and server-streaming).
    Each method's timed handler is built on its first call and reused."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method in self._handlers:
            return self._handlers[method]
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(GRPC_HEALTH):
            return handler
        if handler.unary_unary:
            handler = grpc.unary_unary_rpc_method_handler(
                _timed_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        elif handler.unary_stream:
            handler = grpc.unary_stream_rpc_method_handler(
                _timed_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        self._handlers[method] = handler
        return handler


def _timed_unary(behavior: Any, method: str) -> Any:
    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started, failed = time.perf_counter(), True
        try:
            response = await behavior(request, context)
            failed = False
            return response
        finally:
            record_request("grpc", method, _status(context, failed), started)

    return timed


def _timed_stream(behavior: Any, method: str) -> Any:
    async def timed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started, failed = time.perf_counter(), True
        try:
            async for response in behavior(request, context):
                yield response
            failed = False
        finally:
            record_request("grpc", method, _status(context, failed), started)

    return timed
