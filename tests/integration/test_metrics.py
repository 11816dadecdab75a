"""Every process's /metrics against the table in docs/observability.md, values that follow from the traffic a
test made, and the names monitoring/ queries against the series a real Prometheus scraped after that traffic."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from embedding.settings import CPU_BACKEND
from ragtrace.v1 import search_pb2, search_pb2_grpc
from ragtrace_tools.kafka_admin import RawRecord, produce, topic_partitions
from tests.conftest import VLLM
from tests.metrics import (
    documented_metrics,
    exemplar_trace_ids,
    exposed_names,
    names_in,
    prometheus_api,
    queried_names,
    recorded_names,
    samples,
    value,
)
from tests.pipeline import Pipeline, wait_until

OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}
GPU_ONLY = {"ragtrace_gpu_memory_used_bytes", "ragtrace_gpu_memory_total_bytes"}
# Names monitoring/ queries from sources that cannot run in the scrape test, by prefix (and nothing else is
# excused): vLLM (the vLLM test checks the vllm:* names against a running vLLM server), NVIDIA's
# DCGM exporter and the embedding processes' GPU memory gauges (both need a GPU; this machine has none).
NOT_SCRAPED_HERE = ("vllm:", "DCGM_", "ragtrace_gpu_")


def _metrics_urls(pipeline: Pipeline) -> dict[str, str]:
    ports = pipeline.services.ports
    return {
        "ingest-api": f"{pipeline.base_url}/metrics",
        "search-gateway": f"{pipeline.search_url}/metrics",
        "embedding-worker": f"http://127.0.0.1:{ports.embedding_metrics}/metrics",
        "indexer-worker": f"http://127.0.0.1:{ports.indexer_metrics}/metrics",
        "embedding-service": f"http://127.0.0.1:{ports.embedding_service_metrics}/metrics",
        "search-service": f"http://127.0.0.1:{ports.search_metrics}/metrics",
    }


def scrape(pipeline: Pipeline, service: str, openmetrics: bool = False) -> str:
    response = httpx.get(_metrics_urls(pipeline)[service], headers=OPENMETRICS if openmetrics else {}, timeout=10)
    assert response.status_code == 200, f"{service}: {response.status_code}"
    return response.text


@dataclass(frozen=True)
class Traffic:
    namespace: str
    ingest_trace_ids: list[str]
    search_trace_id: str


async def _send_poison(pipeline: Pipeline, namespace: str) -> None:
    poison = RawRecord(b"\x00poison", f"{namespace}/poison".encode())
    for topic in (pipeline.kafka.documents_topic, pipeline.kafka.chunks_topic):
        await produce(pipeline.kafka.bootstrap_servers, topic, [poison])


@pytest.fixture(scope="module")
def traffic(faiss_pipeline: Pipeline) -> Traffic:
    """One round of everything the metrics count: two documents, poison on both topics, searches with a
    generated answer (LLM), a repeat (cache hit) and a keyword search."""
    namespace = "metrics-" + uuid.uuid4().hex[:8]
    accepted = [
        faiss_pipeline.ingest(f"Document {i}: lighthouses guide ships with rotating beams.", namespace, f"doc-{i}")
        for i in range(2)
    ]
    faiss_pipeline.wait_for([a["document_id"] for a in accepted], namespace)
    asyncio.run(_send_poison(faiss_pipeline, namespace))
    wait_until(
        lambda: all(
            value(scrape(faiss_pipeline, worker), "ragtrace_dead_letter_messages_total") > 0
            for worker in ("embedding-worker", "indexer-worker")
        ),
        what="both workers to count their dead letters",
    )
    question: dict[str, Any] = {"query": "how do lighthouses guide ships?", "namespace": namespace, "generate": True}
    first = faiss_pipeline.search(**question)
    assert first.status_code == 200, first.text
    assert faiss_pipeline.search(**question).json()["metadata"]["cache_hit"] is True
    keyword = faiss_pipeline.search(query="rotating beams", namespace=namespace, mode="keyword")
    assert keyword.status_code == 200, keyword.text
    return Traffic(namespace, [a["trace_id"] for a in accepted], keyword.json()["metadata"]["trace_id"])


def test_every_documented_metric_is_exposed_by_each_service_it_names(
    faiss_pipeline: Pipeline, traffic: Traffic
) -> None:
    documented = documented_metrics()
    assert len(documented) >= 20, "the metrics table of docs/observability.md was not found"
    expositions = {service: scrape(faiss_pipeline, service) for service in _metrics_urls(faiss_pipeline)}
    missing = []
    for metric in documented:
        for service in metric.services:
            exposition = expositions[service]
            if metric.name in GPU_ONLY:  # declared everywhere, series only on CUDA
                if metric.name not in exposed_names(exposition):
                    missing.append(f"{metric.name} not declared by {service}")
                continue
            labelled = [s for s in samples(exposition) if s.name == metric.sample_name]
            if not any(metric.labels <= set(s.labels) for s in labelled):
                missing.append(f"{metric.name}{sorted(metric.labels)} has no series on {service}")
    assert not missing, "\n".join(missing)


def test_requests_are_counted_by_route_template_and_status(faiss_pipeline: Pipeline, traffic: Traffic) -> None:
    def ingest_count(status: str) -> float:
        exposition = scrape(faiss_pipeline, "ingest-api")
        return value(exposition, "ragtrace_requests_total", endpoint="POST /ingest", status=status)

    def status_count() -> float:
        return value(
            scrape(faiss_pipeline, "ingest-api"),
            "ragtrace_requests_total",
            endpoint="GET /ingest/{document_id}",
            status="200",
        )

    def search_calls(code: str) -> float:
        return value(
            scrape(faiss_pipeline, "search-service"),
            "ragtrace_requests_total",
            protocol="grpc",
            endpoint="/ragtrace.v1.SearchService/Search",
            status=code,
        )

    rejected, looked_up, invalid = ingest_count("422"), status_count(), search_calls("INVALID_ARGUMENT")
    with faiss_pipeline.http() as client:
        assert client.post("/ingest", json={"text": " ", "metadata": {"title": "t"}}).status_code == 422
        assert client.get("/ingest/doc-0", params={"namespace": traffic.namespace}).status_code == 200
    # The gateway checks the same query contract before calling, so the INVALID_ARGUMENT comes from a gRPC client.
    address = f"127.0.0.1:{faiss_pipeline.services.ports.search_grpc}"
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as refused:
        search_pb2_grpc.SearchServiceStub(channel).Search(search_pb2.SearchRequest(query="q", top_k=500), timeout=5)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert ingest_count("422") == rejected + 1
    assert status_count() == looked_up + 1  # one series for every document id
    assert search_calls("INVALID_ARGUMENT") == invalid + 1


def test_latency_histograms_carry_trace_ids_as_exemplars(faiss_pipeline: Pipeline, traffic: Traffic) -> None:
    gateway = scrape(faiss_pipeline, "search-gateway", openmetrics=True)
    assert traffic.search_trace_id in exemplar_trace_ids(gateway, "ragtrace_request_duration_seconds_bucket")
    search = scrape(faiss_pipeline, "search-service", openmetrics=True)
    assert traffic.search_trace_id in exemplar_trace_ids(search, "ragtrace_search_duration_seconds_bucket")
    indexer = scrape(faiss_pipeline, "indexer-worker", openmetrics=True)
    assert exemplar_trace_ids(indexer, "ragtrace_ingest_freshness_seconds_bucket") & set(traffic.ingest_trace_ids)


def test_worker_metrics_follow_the_pipeline(faiss_pipeline: Pipeline, traffic: Traffic) -> None:
    faiss_pipeline.wait_drained()
    kafka = faiss_pipeline.kafka
    partitions = asyncio.run(topic_partitions(kafka.bootstrap_servers, kafka.documents_topic))

    def lag_series() -> dict[str, float]:
        return {
            s.labels["partition"]: s.value
            for s in samples(scrape(faiss_pipeline, "embedding-worker"))
            if s.name == "ragtrace_consumer_lag" and s.labels["topic"] == kafka.documents_topic
        }

    lag = wait_until(lambda: (series := lag_series()) and len(series) == len(partitions) and series, what="lag")
    assert set(lag) == {str(p) for p in partitions} and set(lag.values()) == {0.0}

    indexer = scrape(faiss_pipeline, "indexer-worker")
    with faiss_pipeline.vector_store() as store:
        chunks = store.count(traffic.namespace)
    assert value(indexer, "ragtrace_index_chunks", namespace=traffic.namespace, backend="faiss") == chunks == 2
    assert value(indexer, "ragtrace_ingest_freshness_seconds_count") >= 2
    assert value(indexer, "ragtrace_dead_letter_messages_total", topic=kafka.chunks_topic, error="PoisonMessage") >= 1
    embedding = scrape(faiss_pipeline, "embedding-worker")
    # On CPU the default backend (ONNX Runtime, embedding/settings.py), with its dtype.
    dtype = "int8" if CPU_BACKEND.endswith("int8") else "float32"
    assert value(embedding, "ragtrace_embedding_device_info", device="cpu", backend=CPU_BACKEND, dtype=dtype) == 1
    assert value(embedding, "ragtrace_embedding_texts_total") >= value(
        embedding, "ragtrace_chunks_processed_total", stage="embedding"
    )


def test_cache_and_llm_metrics_count_each_search(faiss_pipeline: Pipeline, traffic: Traffic) -> None:
    def read() -> dict[str, float]:
        exposition = scrape(faiss_pipeline, "search-service")
        return {
            "miss": value(exposition, "ragtrace_cache_lookups_total", cache="result", result="miss"),
            "hit": value(exposition, "ragtrace_cache_lookups_total", cache="result", result="hit"),
            "ok": value(exposition, "ragtrace_llm_requests_total", outcome="ok"),
            "first_tokens": value(exposition, "ragtrace_llm_time_to_first_token_seconds_count"),
            "output_tokens": value(exposition, "ragtrace_llm_tokens_total", direction="output"),
            "llm_answers": value(exposition, "ragtrace_answers_total", generator="llm"),
        }

    before = read()
    question: dict[str, Any] = {"query": f"beams {uuid.uuid4().hex}", "namespace": traffic.namespace, "generate": True}
    assert faiss_pipeline.search(**question).json()["metadata"]["generator"] == "llm"
    assert faiss_pipeline.search(**question).json()["metadata"]["cache_hit"] is True
    after = read()
    assert after["miss"] == before["miss"] + 1 and after["hit"] == before["hit"] + 1
    assert after["ok"] == before["ok"] + 1 and after["first_tokens"] == before["first_tokens"] + 1
    assert after["llm_answers"] == before["llm_answers"] + 1
    assert after["output_tokens"] > before["output_tokens"]


# monitoring/ queries only what a real scrape has seen ------------------------------------------------------


def not_scraped(queried: dict[str, set[str]], scraped: set[str]) -> dict[str, list[str]]:
    """Each queried name no scrape produced (the rules' own records and NOT_SCRAPED_HERE aside), with where it
    is queried."""
    known = scraped | recorded_names()
    return {
        name: sorted(where)
        for name, where in queried.items()
        if name not in known and not name.startswith(NOT_SCRAPED_HERE)
    }


@pytest.fixture(scope="module")
def scraped(prometheus: str, traffic: Traffic) -> set[str]:
    """Every series name the local Prometheus holds once it has scraped after the traffic (it scrapes every 15 s):
    the ragtrace processes, Kafka's JMX exporter agent, MinIO, the Redis exporter, the collector, itself."""

    def names() -> set[str]:
        return set(prometheus_api(prometheus, "label/__name__/values"))

    def scraped_after_traffic() -> set[str] | None:
        held = names()
        return held if not_scraped(queried_names(), held) == {} else None

    try:
        held: set[str] = wait_until(scraped_after_traffic, 60, 2, "Prometheus to hold every name monitoring/ queries")
        return held
    except AssertionError:
        return names()  # the test names what is missing


def test_every_metric_monitoring_queries_was_scraped(scraped: set[str]) -> None:
    queried = queried_names()
    assert {"ragtrace_requests_total", "kafka_server_brokertopicmetrics_messagesin_total", "redis_up"} <= set(queried)
    missing = not_scraped(queried, scraped)
    assert not missing, f"queried in monitoring/ but in no series Prometheus scraped: {missing}"


def test_a_misspelt_metric_name_is_reported(scraped: set[str]) -> None:
    broken = names_in([("broken.json: Requests", "sum(rate(ragtrace_request_total[5m]))")])
    assert not_scraped(broken, scraped) == {"ragtrace_request_total": ["broken.json: Requests"]}


def test_the_rules_evaluate_without_errors(prometheus: str, scraped: set[str]) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        rules = [rule for group in prometheus_api(prometheus, "rules")["groups"] for rule in group["rules"]]
        return rules if all(rule["evaluationTime"] > 0 for rule in rules) else None

    rules = wait_until(evaluated, 60, 1, "every rule evaluated once")
    failing = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not failing, failing


def test_every_vllm_metric_monitoring_queries_is_exposed_by_the_running_server(vllm: VLLM) -> None:
    """vLLM renames its metrics between releases: the names monitoring/ queries against the pinned server's own."""
    queried = {name: where for name, where in queried_names().items() if name.startswith("vllm:")}
    assert "vllm:kv_cache_usage_perc" in queried
    exposed = exposed_names(vllm.metrics())
    unknown = {name: sorted(where) for name, where in queried.items() if name not in exposed}
    assert not unknown, f"queried in monitoring/ but not exposed by vLLM {vllm.model}: {unknown}"
