"""Reading traces back from Tempo's HTTP API: one trace by id (`/api/traces/<id>`) and a TraceQL search
(`/api/search?q=<TraceQL>`). The one Tempo client: the gateway's trace endpoint (the search page's waterfall)
and the tools' `ragtrace trace` / `traces` use it. Tempo not answering is DependencyUnavailable("tempo")."""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from ragtrace.errors import DependencyUnavailable


@dataclass(frozen=True)
class SpanLink:
    """A span of another trace that a span points to (the retrieval span's link to a source's ingestion)."""

    trace_id: str
    span_id: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpanView:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any] = field(default_factory=dict)
    scope: str = ""  # the instrumentation scope (the tracer's name) that made the span
    links: list[SpanLink] = field(default_factory=list)


# What a waterfall shows of a span besides its name, service and timing (`ragtrace trace`, the search page).
KEY_ATTRIBUTES = (
    "document.id",
    "ragtrace.namespace",
    "messaging.destination.name",
    "messaging.kafka.offset",
    "ragtrace.chunk.count",
    "ragtrace.embedding.model",
    "db.system.name",
    "gen_ai.request.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "ragtrace.search.mode",
    "ragtrace.search.results",
    "ragtrace.cache.hit",
    "http.response.status_code",
    "ragtrace.skipped",
)


def key_attributes(span: SpanView) -> dict[str, Any]:
    return {key: span.attributes[key] for key in KEY_ATTRIBUTES if key in span.attributes}


def tree_order(spans: list[SpanView]) -> list[tuple[SpanView, int]]:
    """Each span with its depth, parents before their children, siblings by start: a waterfall's rows. A span
    whose parent is not in the trace (yet) is shown as a root."""
    children: dict[str, list[SpanView]] = {}
    for span in spans:
        children.setdefault(span.parent_span_id, []).append(span)
    known = {s.span_id for s in spans}
    rows: list[tuple[SpanView, int]] = []

    def add(span: SpanView, depth: int) -> None:
        rows.append((span, depth))
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start_ns):
            add(child, depth + 1)

    for root in sorted((s for s in spans if s.parent_span_id not in known), key=lambda s: s.start_ns):
        add(root, 0)
    return rows


def _hex_id(value: str) -> str:
    """Tempo encodes ids as base64 (protobuf's JSON mapping of bytes); OTLP JSON as hex. Accept both."""
    if not value:
        return ""
    if len(value) in (16, 32) and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    try:
        return base64.b64decode(value).hex()
    except (binascii.Error, ValueError):
        return value


def _value(any_value: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in any_value:
            return any_value[key]
    if "intValue" in any_value:
        return int(any_value["intValue"])
    if "arrayValue" in any_value:
        return [_value(v) for v in any_value["arrayValue"].get("values", [])]
    return None


def _attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {item["key"]: _value(item.get("value", {})) for item in items or []}


def parse_trace(body: dict[str, Any]) -> list[SpanView]:
    """Spans of a Tempo /api/traces response, earliest first."""
    spans: list[SpanView] = []
    for batch in body.get("batches", body.get("resourceSpans", [])):
        service = str(_attributes(batch.get("resource", {}).get("attributes")).get("service.name", "unknown"))
        for scope in batch.get("scopeSpans", batch.get("instrumentationLibrarySpans", [])):
            scope_name = str(scope.get("scope", scope.get("instrumentationLibrary", {})).get("name", ""))
            for span in scope.get("spans", []):
                spans.append(
                    SpanView(
                        trace_id=_hex_id(span.get("traceId", "")),
                        span_id=_hex_id(span.get("spanId", "")),
                        parent_span_id=_hex_id(span.get("parentSpanId", "")),
                        name=span.get("name", ""),
                        service=service,
                        kind=str(span.get("kind", "SPAN_KIND_INTERNAL")).removeprefix("SPAN_KIND_").lower(),
                        start_ns=int(span.get("startTimeUnixNano", 0)),
                        end_ns=int(span.get("endTimeUnixNano", 0)),
                        status=str(span.get("status", {}).get("code", "STATUS_CODE_UNSET"))
                        .removeprefix("STATUS_CODE_")
                        .lower(),
                        attributes=_attributes(span.get("attributes")),
                        scope=scope_name,
                        links=[
                            SpanLink(
                                _hex_id(link.get("traceId", "")),
                                _hex_id(link.get("spanId", "")),
                                _attributes(link.get("attributes")),
                            )
                            for link in span.get("links", [])
                        ],
                    )
                )
    return sorted(spans, key=lambda s: s.start_ns)


def _get(url: str, timeout_s: float, params: dict[str, Any] | None = None) -> httpx.Response:
    """Tempo's answer; DependencyUnavailable("tempo") when it gives none in time, or fails itself (5xx)."""
    try:
        response = httpx.get(url, params=params, timeout=timeout_s)
    except httpx.TransportError as error:
        raise DependencyUnavailable("tempo", f"no answer from {url} ({type(error).__name__})") from error
    if response.status_code >= 500:
        raise DependencyUnavailable("tempo", f"it answered {response.status_code}: {response.text.strip()[:200]}")
    return response


def fetch_trace(base_url: str, trace_id: str, timeout_s: float = 5.0) -> list[SpanView] | None:
    """The trace's spans, or None when Tempo does not know it (yet)."""
    response = _get(f"{base_url.rstrip('/')}/api/traces/{trace_id}", timeout_s)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return parse_trace(response.json())


@dataclass(frozen=True)
class TraceSummary:
    """One trace a TraceQL search found: its root span, when it started, how long it took, its services."""

    trace_id: str
    root_service: str
    root_name: str
    start_ns: int
    duration_ms: float
    services: list[str]


def parse_search(body: dict[str, Any]) -> list[TraceSummary]:
    """The traces of a Tempo /api/search response, newest first."""
    found = [
        TraceSummary(
            trace_id=str(trace["traceID"]).lower().rjust(32, "0"),  # hex, leading zeros dropped
            root_service=trace.get("rootServiceName", "<root span not yet received>"),
            root_name=trace.get("rootTraceName", ""),
            start_ns=int(trace.get("startTimeUnixNano", 0)),
            duration_ms=float(trace.get("durationMs", 0)),
            services=sorted(trace.get("serviceStats", {})),
        )
        for trace in body.get("traces", [])
    ]
    return sorted(found, key=lambda t: t.start_ns, reverse=True)


def search_traces(
    base_url: str, traceql: str, since_s: float = 3600, limit: int = 20, timeout_s: float = 10.0
) -> list[TraceSummary]:
    """Traces matching a TraceQL query (`{ span.document.id = "kafka-101" }`) that started in the last
    `since_s` seconds. A malformed query raises httpx.HTTPStatusError (Tempo answers 400 and says why)."""
    now = int(time.time())
    response = _get(
        f"{base_url.rstrip('/')}/api/search",
        timeout_s,
        {"q": traceql, "start": now - int(since_s), "end": now + 1, "limit": limit},
    )
    response.raise_for_status()
    return parse_search(response.json())
