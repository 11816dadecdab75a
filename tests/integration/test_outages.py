"""A dependency that is down gets a fast 503 naming it; nothing accepted is lost when it comes back.

These stop and restart the session's own servers, so they run only where the tests started them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from ragtrace.devstack.supervisor import Component
from tests.infra import Infra
from tests.pipeline import Pipeline


def _namespace() -> str:
    return "outage-" + uuid.uuid4().hex[:8]


def _server(infra: Infra, name: str) -> Component:
    if infra.stack is None:
        pytest.skip(f"{name} was not started by this test session, so it is not ours to stop")
    return next(c for c in infra.stack.components() if c.name == name)


@pytest.fixture
def kafka(infra: Infra) -> Iterator[Component]:
    """The session's Kafka, running again after the test whatever happened in it."""
    kafka = _server(infra, "kafka")
    yield kafka
    assert infra.stack is not None
    infra.stack.supervisor.start(kafka)


def _timed_post(pipeline: Pipeline, body: dict[str, object]) -> tuple[httpx.Response, float]:
    with pipeline.http() as client:
        started = time.monotonic()
        response = client.post("/ingest", json=body)
        return response, time.monotonic() - started


def test_kafka_down_gives_a_fast_503_and_nothing_accepted_is_lost(
    faiss_pipeline: Pipeline, infra: Infra, kafka: Component
) -> None:
    namespace = _namespace()
    assert infra.stack is not None
    # Accepted just before Kafka goes away: on Kafka, most not yet processed.
    accepted = [f"before-{i}" for i in range(5)]
    for document_id in accepted:
        faiss_pipeline.ingest(f"Accepted document {document_id} about lighthouses.", namespace, document_id)
    infra.stack.supervisor.stop(kafka)

    response, elapsed = _timed_post(
        faiss_pipeline,
        {
            "text": "Refused while Kafka is down.",
            "metadata": {"title": "t"},
            "namespace": namespace,
            "document_id": "refused",
        },
    )
    assert response.status_code == 503, response.text
    assert response.json()["dependency"] == "kafka"
    assert "kafka" in response.json()["message"]
    assert elapsed < 1.0, f"503 took {elapsed:.2f}s"
    refused = faiss_pipeline.status("refused", namespace)
    assert refused["status"] == "failed" and "not accepted" in refused["error"]
    with faiss_pipeline.http() as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503 and "kafka" in ready.json()["message"]

    infra.stack.supervisor.start(kafka)
    statuses = faiss_pipeline.wait_for(accepted, namespace, timeout_s=180)
    assert all(s["chunks"] == 1 for s in statuses.values())
    faiss_pipeline.ingest("Accepted again once Kafka is back.", namespace, "after")
    faiss_pipeline.wait_for(["after"], namespace, timeout_s=120)
    faiss_pipeline.wait_drained()
    assert faiss_pipeline.status("refused", namespace)["status"] == "failed", "no event followed the 503"
    with faiss_pipeline.vector_store() as store:
        assert store.count(namespace, "refused") == 0


def test_minio_down_gives_a_fast_503_naming_it(faiss_pipeline: Pipeline, infra: Infra) -> None:
    minio = _server(infra, "minio")
    assert infra.stack is not None
    infra.stack.supervisor.stop(minio)
    try:
        response, elapsed = _timed_post(
            faiss_pipeline, {"text": "MinIO is down.", "metadata": {"title": "t"}, "namespace": _namespace()}
        )
        with faiss_pipeline.http() as client:
            ready = client.get("/readyz")
    finally:
        infra.stack.supervisor.start(minio)
    assert response.status_code == 503, response.text
    assert response.json()["dependency"] == "minio"
    assert elapsed < 1.0, f"503 took {elapsed:.2f}s"
    assert ready.status_code == 503 and "minio" in ready.json()["message"]
    namespace = _namespace()
    faiss_pipeline.ingest("MinIO is back.", namespace, "back")
    faiss_pipeline.wait_for(["back"], namespace)
