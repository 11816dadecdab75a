"""A trace as the search page draws it, read from Tempo (ragtrace/tempo.py) on the page's behalf: rows in tree
order, each span's service, name, start and duration in milliseconds from the trace's start, key attributes,
and its links to other traces (the retrieval span's links lead to the ingestion of each source)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, Field

from ragtrace.tempo import SpanView, key_attributes, tree_order


class WaterfallLink(BaseModel):
    trace_id: str
    span_id: str
    attributes: dict[str, Any] = Field(default_factory=dict)


class WaterfallSpan(BaseModel):
    span_id: str
    parent_span_id: str
    depth: int = Field(description="0 for a root; a child is one deeper than its parent")
    service: str
    name: str
    kind: str
    status: str
    start_ms: float = Field(description="from the trace's first span")
    duration_ms: float
    attributes: dict[str, Any] = Field(default_factory=dict, description="the span's key attributes")
    links: list[WaterfallLink] = Field(default_factory=list)


class Waterfall(BaseModel):
    trace_id: str
    duration_ms: float
    spans: list[WaterfallSpan]


def waterfall(trace_id: str, spans: list[SpanView]) -> Waterfall:
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns for s in spans)
    return Waterfall(
        trace_id=trace_id,
        duration_ms=(end - start) / 1e6,
        spans=[
            WaterfallSpan(
                span_id=span.span_id,
                parent_span_id=span.parent_span_id,
                depth=depth,
                service=span.service,
                name=span.name,
                kind=span.kind,
                status=span.status,
                start_ms=(span.start_ns - start) / 1e6,
                duration_ms=(span.end_ns - span.start_ns) / 1e6,
                attributes=key_attributes(span),
                links=[WaterfallLink(**asdict(link)) for link in span.links],
            )
            for span, depth in tree_order(spans)
        ],
    )


def namespaces(spans: list[SpanView]) -> set[str]:
    """The namespaces a trace's spans name: a key must be allowed every one of them to read the trace."""
    return {str(s.attributes["ragtrace.namespace"]) for s in spans if "ragtrace.namespace" in s.attributes}
