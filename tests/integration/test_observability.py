"""Logs and metrics of a running pipeline in the real backends: a request's log line in Loki, found by its trace
id with LogQL (shipped by the collector from the process's log file); Prometheus scraping every ragtrace process,
Kafka's JMX exporter agent, MinIO and the Redis exporter, with monitoring/'s rules loaded."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import yaml

from ragtrace_tools.devstack.observability import MONITORING, Observability
from tests.conftest import VLLM
from tests.infra import Infra
from tests.metrics import prometheus_api
from tests.pipeline import Pipeline, wait_until

RAGTRACE_JOBS = {
    "ingest-api",
    "search-gateway",
    "embedding-worker",
    "indexer-worker",
    "embedding-service",
    "search-service",
}


def _logql(loki_url: str, query: str) -> list[tuple[dict[str, str], str]]:
    """(stream labels, line) of every log line the LogQL query selects in the last 10 minutes."""
    now = time.time_ns()
    response = httpx.get(
        f"{loki_url}/loki/api/v1/query_range",
        params={"query": query, "start": now - 600 * 10**9, "end": now + 10**9, "limit": 100},
        timeout=10,
    )
    response.raise_for_status()
    return [(stream["stream"], line) for stream in response.json()["data"]["result"] for _, line in stream["values"]]


def test_a_requests_log_line_is_found_in_loki_by_its_trace_id(
    faiss_pipeline: Pipeline, observability: Observability
) -> None:
    namespace = "logs-" + uuid.uuid4().hex[:8]
    accepted = faiss_pipeline.ingest("Anemometers measure wind speed.", namespace, "anemometer")
    trace_id = accepted["trace_id"]

    # trace_id is the log record's trace context (the collector's trace_parser), kept by Loki as structured
    # metadata: a label filter finds it, not a text search.
    query = f'{{service_name="ingest-api"}} | trace_id="{trace_id}"'
    found = wait_until(lambda: _logql(observability.loki_url, query), 60, 1, f"LogQL {query}")
    lines = [json.loads(line) for _, line in found]
    [accepted_line] = [entry for entry in lines if "accepted document anemometer" in entry["message"]]
    assert accepted_line["trace_id"] == trace_id and len(accepted_line["span_id"]) == 16
    assert accepted_line["service"] == "ingest-api" and accepted_line["level"] == "INFO"
    assert all(labels["service_name"] == "ingest-api" for labels, _ in found)


def test_prometheus_scrapes_every_ragtrace_process_and_loads_the_rules(
    faiss_pipeline: Pipeline, prometheus: str, infra: Infra, vllm: VLLM
) -> None:
    # Kafka's JMX exporter agent and the Redis exporter run where the session started the servers itself.
    servers = {"kafka", "redis-exporter"} if infra.stack else set()
    # The inbox worker runs where MinIO publishes bucket events to Kafka (tests/pipeline.py).
    jobs = RAGTRACE_JOBS | ({"inbox-worker"} if infra.notifies_kafka else set())

    def targets_up() -> dict[str, list[dict[str, Any]]] | None:
        by_job: dict[str, list[dict[str, Any]]] = {}
        for target in prometheus_api(prometheus, "targets")["activeTargets"]:
            by_job.setdefault(target["labels"]["job"], []).append(target)
        wanted = jobs | servers | {"minio", "otel-collector", "prometheus", "vllm"}
        if all(by_job.get(job) and all(t["health"] == "up" for t in by_job[job]) for job in wanted):
            return by_job
        return None

    by_job = wait_until(targets_up, 60, 1, "every ragtrace process, the servers, the collector and vLLM scraped and up")
    for job in jobs:
        [target] = by_job[job]
        assert target["scrapeUrl"].startswith("http://127.0.0.1:"), target
    [vllm_target] = by_job["vllm"]
    assert vllm_target["scrapeUrl"] == f"http://127.0.0.1:{vllm.component.port}/metrics", "Kind's vllm job, local"

    expected = {
        group["name"]: {rule.get("alert") or rule["record"] for rule in group["rules"]}
        for path in (MONITORING / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
    }
    loaded = {
        group["name"]: {rule["name"] for rule in group["rules"]}
        for group in prometheus_api(prometheus, "rules")["groups"]
    }
    assert loaded == expected
    up = prometheus_api(prometheus, "query", query='up{job="ingest-api"}')["result"]
    assert [sample["value"][1] for sample in up] == ["1"]
