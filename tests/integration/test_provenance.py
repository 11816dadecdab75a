"""From an answer back to how its sources got in: each source carries its document's ingestion (trace, span,
when, which model and pipeline version), the retrieval span links to those ingestion spans in Tempo, and a
namespace's cost (LLM tokens, embedding time) is counted. Real pipelines, the session's real Tempo."""

from __future__ import annotations

import functools
import json
import uuid
from datetime import datetime

import httpx
import pytest

from ragtrace.telemetry import RAGTRACE_VERSION
from ragtrace.tempo import SpanView, fetch_trace
from ragtrace_tools.devstack.observability import Observability
from tests.integration.test_metrics import scrape
from tests.metrics import value
from tests.pipeline import API_KEY, TENANT_KEY, Pipeline, wait_until

DOCUMENTS = {
    "anemometer": "An anemometer measures wind speed with spinning cups.",
    "hygrometer": "A hygrometer measures the humidity of the air.",
}


def _span(trace_url: str, trace_id: str, service: str, name: str) -> SpanView | None:
    """The trace's span `name` of `service`, once Tempo has it."""
    return next((s for s in fetch_trace(trace_url, trace_id) or [] if (s.service, s.name) == (service, name)), None)


def test_sources_carry_their_ingestion_and_the_retrieval_span_links_to_it(
    pipeline: Pipeline, observability: Observability
) -> None:
    namespace = "prov-" + uuid.uuid4().hex[:8]
    accepted = {doc: pipeline.ingest(text, namespace, doc, title=doc) for doc, text in DOCUMENTS.items()}
    statuses = pipeline.wait_for(DOCUMENTS, namespace)
    for doc, status in statuses.items():
        assert status["trace_id"] == accepted[doc]["trace_id"], "the status record knows its ingestion's trace"
        assert len(status["span_id"]) == 16

    question = {"query": f"What measures wind and humidity? {uuid.uuid4().hex}", "namespace": namespace}
    response = pipeline.search(**question)
    assert response.status_code == 200, response.text
    body = response.json()
    assert {s["document_id"] for s in body["sources"]} == set(DOCUMENTS)
    for source in body["sources"]:
        provenance, status = source["provenance"], statuses[source["document_id"]]
        assert (provenance["trace_id"], provenance["span_id"]) == (status["trace_id"], status["span_id"])
        assert provenance["model"] == "all-MiniLM-L6-v2" and provenance["pipeline_version"] == RAGTRACE_VERSION
        indexed_at = datetime.fromisoformat(provenance["indexed_at"])
        assert (
            datetime.fromisoformat(status["accepted_at"]) <= indexed_at <= datetime.fromisoformat(status["indexed_at"])
        )

    # The retrieval span links to each source's ingestion span, and Tempo answers each linked trace with it.
    retrieval = wait_until(
        lambda: _span(observability.tempo_url, body["metadata"]["trace_id"], "search-service", "retrieve hybrid"),
        30,
        0.3,
        "the search's retrieval span in Tempo",
    )
    links = {(link.trace_id, link.span_id): link.attributes for link in retrieval.links}
    assert links == {
        (status["trace_id"], status["span_id"]): {"document.id": doc, "ragtrace.link.type": "ingestion"}
        for doc, status in statuses.items()
    }
    for trace_id, span_id in links:
        ingest: SpanView = wait_until(
            functools.partial(_span, observability.tempo_url, trace_id, "ingest-api", "POST /ingest"),
            30,
            0.3,
            f"the linked ingestion trace {trace_id} in Tempo",
        )
        assert ingest.span_id == span_id and not ingest.parent_span_id, "the link names the ingestion's root span"

    # A cached answer carries the same provenance.
    cached = pipeline.search(**question).json()
    assert cached["metadata"]["cache_hit"] is True, json.dumps([body["metadata"], cached["metadata"]])
    assert [s["provenance"] for s in cached["sources"]] == [s["provenance"] for s in body["sources"]]


def test_a_namespaces_tokens_and_embedding_time_are_counted(
    faiss_pipeline: Pipeline, observability: Observability
) -> None:
    namespace = "cost-" + uuid.uuid4().hex[:8]
    accepted = faiss_pipeline.ingest("Thermocouples turn heat into a voltage.", namespace, "thermo")
    faiss_pipeline.wait_for(["thermo"], namespace)

    # Embedding time: the document was alone in its namespace's batch, so its namespace was charged the whole
    # model call, which its trace's `embed` span covers.
    embed = wait_until(
        lambda: _span(observability.tempo_url, accepted["trace_id"], "embedding-worker", "embed"),
        30,
        0.3,
        "the document's embed span in Tempo",
    )
    charged = value(
        scrape(faiss_pipeline, "embedding-worker"),
        "ragtrace_namespace_embedding_seconds_total",
        namespace=namespace,
        stage="ingest",
    )
    assert charged == pytest.approx((embed.end_ns - embed.start_ns) / 1e9, rel=1e-3)

    response = faiss_pipeline.search(query="What do thermocouples do?", namespace=namespace, generate=True)
    assert response.status_code == 200, response.text
    metadata = response.json()["metadata"]
    assert metadata["generator"] == "llm" and metadata["input_tokens"] > 0 and metadata["output_tokens"] > 0
    search_metrics = scrape(faiss_pipeline, "search-service")
    tokens = {
        kind: value(search_metrics, "ragtrace_namespace_tokens_total", namespace=namespace, kind=kind)
        for kind in ("prompt", "completion")
    }
    assert tokens == {"prompt": metadata["input_tokens"], "completion": metadata["output_tokens"]}
    query_seconds = value(
        search_metrics, "ragtrace_namespace_embedding_seconds_total", namespace=namespace, stage="query"
    )
    assert 0 < query_seconds <= metadata["timings_ms"]["embed"] / 1000

    # The same question again is answered from the cache: no new tokens are charged.
    cached = faiss_pipeline.search(query="What do thermocouples do?", namespace=namespace, generate=True)
    assert cached.json()["metadata"]["cache_hit"] is True
    after = scrape(faiss_pipeline, "search-service")
    assert value(after, "ragtrace_namespace_tokens_total", namespace=namespace, kind="prompt") == tokens["prompt"]


SERVICES = {"ingest-api", "embedding-worker", "indexer-worker"}


def test_the_gateway_serves_traces_and_document_statuses_within_the_keys_namespaces(
    faiss_pipeline: Pipeline, observability: Observability
) -> None:
    namespace = "gw-" + uuid.uuid4().hex[:8]
    accepted = faiss_pipeline.ingest("Altimeters read altitude from air pressure.", namespace, "altimeter")
    faiss_pipeline.wait_for(["altimeter"], namespace)
    gateway = httpx.Client(base_url=faiss_pipeline.search_url, headers={"X-API-Key": API_KEY}, timeout=10)

    status = gateway.get("/api/documents/altimeter", params={"namespace": namespace})
    assert status.status_code == 200, status.text
    assert status.json()["status"] == "indexed" and status.json()["trace_id"] == accepted["trace_id"]
    missing = gateway.get("/api/documents/nothing-here", params={"namespace": namespace})
    assert missing.status_code == 404 and "nothing-here" in missing.json()["message"]

    def whole() -> dict[str, object] | None:
        answer = gateway.get(f"/api/traces/{accepted['trace_id']}")
        found = answer.json()["spans"] if answer.status_code == 200 else []
        # Each process exports its spans on its own schedule: wait for all three services, not only the ends.
        complete = {"POST /ingest", "index write"} <= {s["name"] for s in found}
        return answer.json() if complete and {s["service"] for s in found} >= SERVICES else None

    trace = wait_until(whole, 30, 0.3, "the ingestion's waterfall through the gateway")
    spans = trace["spans"]
    assert spans[0]["name"] == "POST /ingest" and spans[0]["depth"] == 0 and spans[0]["start_ms"] == 0
    assert all(s["start_ms"] >= 0 and s["duration_ms"] >= 0 for s in spans)
    assert {s["service"] for s in spans} >= SERVICES
    assert any(s["attributes"].get("document.id") == "altimeter" for s in spans)

    unknown = gateway.get("/api/traces/" + "0" * 31 + "1")
    assert unknown.status_code == 404 and "not in Tempo" in unknown.json()["message"]
    assert gateway.get("/api/traces/not-a-trace-id").status_code == 422
    # A tenant's key reads neither another namespace's documents nor their traces.
    tenant = {"X-API-Key": TENANT_KEY}
    assert gateway.get("/api/documents/altimeter", params={"namespace": namespace}, headers=tenant).status_code == 403
    assert gateway.get(f"/api/traces/{accepted['trace_id']}", headers=tenant).status_code == 403
