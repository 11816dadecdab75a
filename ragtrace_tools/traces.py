"""Reading a trace back from Tempo's HTTP API (or the local trace store, which answers the same way)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import httpx


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
                    )
                )
    return sorted(spans, key=lambda s: s.start_ns)


def fetch_trace(base_url: str, trace_id: str, timeout_s: float = 5.0) -> list[SpanView] | None:
    """The trace's spans, or None when the store does not know it (yet)."""
    response = httpx.get(f"{base_url.rstrip('/')}/api/traces/{trace_id}", timeout=timeout_s)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return parse_trace(response.json())
