"""A dependency that is down gets a fast 503 naming it; nothing accepted is lost when it comes back.

These stop and restart the session's own servers, so they run only where the tests started them.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.infra import Infra
from tests.pipeline import Pipeline, session_server, timed


def _namespace() -> str:
    return "outage-" + uuid.uuid4().hex[:8]


def _post(pipeline: Pipeline, body: dict[str, Any]) -> httpx.Response:
    with pipeline.http() as client:
        return client.post("/ingest", json=body)


def _readiness(pipeline: Pipeline) -> httpx.Response:
    with pipeline.http() as client:
        return client.get("/readyz")


def test_kafka_down_gives_a_fast_503_and_nothing_accepted_is_lost(faiss_pipeline: Pipeline, infra: Infra) -> None:
    supervisor, kafka = session_server(infra, "kafka")
    namespace = _namespace()
    # Accepted just before Kafka goes away: on Kafka, most not yet processed.
    accepted = [f"before-{i}" for i in range(5)]
    for document_id in accepted:
        faiss_pipeline.ingest(f"Accepted document {document_id} about lighthouses.", namespace, document_id)
    refusal = {
        "text": "Refused while Kafka is down.",
        "metadata": {"title": "t"},
        "namespace": namespace,
        "document_id": "refused",
    }
    with supervisor.stopped(kafka):
        response, elapsed = timed(lambda: _post(faiss_pipeline, refusal))
        refused = faiss_pipeline.status("refused", namespace)
        ready = _readiness(faiss_pipeline)
    assert response.status_code == 503, response.text
    assert response.json()["dependency"] == "kafka"
    assert "kafka" in response.json()["message"]
    assert elapsed < 1.0, f"503 took {elapsed:.2f}s"
    assert refused["status"] == "failed" and "not accepted" in refused["error"]
    assert ready.status_code == 503 and "kafka" in ready.json()["message"]

    statuses = faiss_pipeline.wait_for(accepted, namespace, timeout_s=180)
    assert all(s["chunks"] == 1 for s in statuses.values())
    faiss_pipeline.ingest("Accepted again once Kafka is back.", namespace, "after")
    faiss_pipeline.wait_for(["after"], namespace, timeout_s=120)
    faiss_pipeline.wait_drained()
    assert faiss_pipeline.status("refused", namespace)["status"] == "failed", "the refused request had no effect"
    with faiss_pipeline.vector_store() as store:
        assert store.count(namespace, "refused") == 0


def test_minio_down_gives_a_fast_503_naming_it(faiss_pipeline: Pipeline, infra: Infra) -> None:
    supervisor, minio = session_server(infra, "minio")
    body = {"text": "MinIO is down.", "metadata": {"title": "t"}, "namespace": _namespace()}
    with supervisor.stopped(minio):
        response, elapsed = timed(lambda: _post(faiss_pipeline, body))
        ready = _readiness(faiss_pipeline)
    assert response.status_code == 503, response.text
    assert response.json()["dependency"] == "minio"
    assert elapsed < 1.0, f"503 took {elapsed:.2f}s"
    assert ready.status_code == 503 and "minio" in ready.json()["message"]
    namespace = _namespace()
    faiss_pipeline.ingest("MinIO is back.", namespace, "back")
    faiss_pipeline.wait_for(["back"], namespace)
