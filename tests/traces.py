"""Reading a trace back from Tempo for the tests: spans arrive in batches, from several processes."""

from __future__ import annotations

from ragtrace.tempo import SpanView, TraceSummary, fetch_trace, search_traces


def whole_tree(trace_url: str, trace_id: str, must_have: set[tuple[str, str]]) -> list[SpanView] | None:
    """The trace once it holds the given (service, span name) pairs and every span's parent: spans reach Tempo
    in batches, from several processes, through the collector, so a trace is read again until it is whole."""
    spans = fetch_trace(trace_url, trace_id) or []
    ids = {s.span_id for s in spans}
    if must_have <= {(s.service, s.name) for s in spans} and all(
        s.parent_span_id in ids for s in spans if s.parent_span_id
    ):
        return spans
    return None


def path_to_root(span: SpanView, by_id: dict[str, SpanView]) -> list[SpanView]:
    path = [span]
    while path[-1].parent_span_id:
        path.append(by_id[path[-1].parent_span_id])
    return path


def searchable_document_traces(trace_url: str, document_id: str, namespace: str) -> list[TraceSummary] | None:
    """The traces TraceQL finds by the document's id and namespace, once each is searchable as a whole: Tempo
    makes a trace's spans searchable in parts, as each part has been idle for 2 s, so the indexer's spans and
    the root span (another process's export, which CI once saw searchable after the indexer's) are waited for."""
    traceql = f'{{ span.document.id = "{document_id}" && span.ragtrace.namespace = "{namespace}" }}'
    found = search_traces(trace_url, traceql)
    whole = found and all("indexer-worker" in t.services and t.root_name for t in found)
    return found if whole else None
