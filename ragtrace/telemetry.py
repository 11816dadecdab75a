"""One telemetry setup for every ragtrace process: `instrument_all` is the only place instrumentation is
switched on; every runner in ragtrace/runtime.py calls it once, at start-up.

Export follows the standard OTEL_* variables: OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) when one is set, nothing otherwise; OTEL_TRACES_SAMPLER and
OTEL_TRACES_SAMPLER_ARG choose the sampler (parent-based ratio sampling: `parentbased_traceidratio`),
OTEL_PROPAGATORS the propagators (W3C trace context and baggage by default).

Kafka: opentelemetry-instrumentation-aiokafka makes the send and receive spans and carries the W3C context in
the message headers; FastStream's own Kafka telemetry is not enabled, so there is one set of messaging spans.
The processing span of each message (ragtrace/messaging.py) is a child of the context in its headers.
LLM calls: opentelemetry-instrumentation-openai-v2 makes the `chat <model>` span (gen_ai.* request and usage
attributes) around the `openai` SDK's call, the HTTP client span under it; query/generation.py adds ragtrace's own.
FastAPI apps are instrumented where they are made (ragtrace/http.py), since that instrumentation is per app.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from importlib.metadata import version
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger(__name__)

# The version of ragtrace this process runs: its `service.version`, and the pipeline version the index keeps.
RAGTRACE_VERSION = version("ragtrace")


def _resource(service_name: str) -> Resource:
    attributes: dict[str, Any] = {
        "service.name": os.environ.get("OTEL_SERVICE_NAME", service_name),
        "service.namespace": "ragtrace",
        "service.version": RAGTRACE_VERSION,
        "deployment.environment.name": os.environ.get("RAGTRACE_ENVIRONMENT", "local"),
    }
    # Set by the Kubernetes manifests through the downward API.
    for variable, key in (("K8S_POD_NAME", "k8s.pod.name"), ("K8S_NAMESPACE_NAME", "k8s.namespace.name")):
        if os.environ.get(variable):
            attributes[key] = os.environ[variable]
    return Resource.create(attributes)


def instrument_all(service_name: str) -> TracerProvider:
    """Install this process's tracer provider and every client and server instrumentation it may use (call
    once, at start-up, before any client is made)."""
    provider = TracerProvider(resource=_resource(service_name))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    AIOKafkaInstrumentor().instrument(tracer_provider=provider)
    GrpcAioInstrumentorServer().instrument(tracer_provider=provider)
    GrpcAioInstrumentorClient().instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    return provider


def record_batch_share(
    tracer: trace.Tracer, name: str, parent: trace.Span, start_ns: int, end_ns: int, attributes: Mapping[str, Any]
) -> None:
    """One message's share of work done for a whole batch, as a child span in that message's own trace."""
    tracer.start_span(name, context=trace.set_span_in_context(parent), start_time=start_ns, attributes=attributes).end(
        end_time=end_ns
    )


def span_failed(span: trace.Span, error: Exception) -> Exception:
    """Record the error on the span and mark it failed; returns the error, for the caller's failure map."""
    span.record_exception(error)
    span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
    return error


def skip_message(span: trace.Span, reason: str) -> None:
    """Note on the processing span why a message was acknowledged without effect."""
    span.set_attribute("ragtrace.skipped", reason)


def trace_id_hex(span: trace.Span | None = None) -> str:
    context = (span or trace.get_current_span()).get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def span_id_hex(span: trace.Span | None = None) -> str:
    context = (span or trace.get_current_span()).get_span_context()
    return format(context.span_id, "016x") if context.is_valid else ""


def remote_span(trace_id: str, span_id: str) -> trace.SpanContext | None:
    """The span context that W3C hex ids name (a span of another trace, to link to); None if they name none."""
    try:
        context = trace.SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True)
    except ValueError:
        return None
    return context if context.is_valid else None


# Kafka headers -------------------------------------------------------------------------------------------


class _HeaderGetter(Getter[Iterable[tuple[str, bytes]]]):
    def get(self, carrier: Iterable[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [v.decode() for k, v in carrier if k == key and v is not None]
        return values or None

    def keys(self, carrier: Iterable[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


def extract_context(headers: Iterable[tuple[str, bytes]] | None) -> Context:
    return propagate.extract(list(headers or []), getter=_HeaderGetter())


def messaging_attributes(
    topic: str,
    operation: str,
    *,
    group: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    key: bytes | None = None,
) -> Mapping[str, Any]:
    """Span attributes from the OpenTelemetry messaging conventions, for Kafka."""
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": operation,
        "messaging.operation.name": {"send": "send", "process": "process", "receive": "poll"}.get(operation, operation),
    }
    if group is not None:
        attributes["messaging.consumer.group.name"] = group
    if partition is not None:
        attributes["messaging.destination.partition.id"] = str(partition)
    if offset is not None:
        attributes["messaging.kafka.offset"] = offset
    if key is not None:
        attributes["messaging.kafka.message.key"] = key.decode(errors="replace")
    return attributes
