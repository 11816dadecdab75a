"""Failure drills an operator runs against a live system, against real servers and bounded in time: many
writers of one document, a broker restarted under load, an object store that hangs, and hostile text.

The drills that stop, restart or freeze a server run only where the tests started the servers.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from ragtrace.clients import minio_client
from ragtrace.ingest_client import OUTCOMES
from ragtrace.schemas import content_hash
from tests.infra import Infra
from tests.pipeline import ONE_DEADLINE_S, Pipeline, frozen, session_server, timed, wait_until

SURROGATE = "\ud800"  # valid in JSON ("\\ud800"), not encodable as UTF-8
JSON = {"content-type": "application/json"}


def _escaped(body: dict[str, Any]) -> bytes:
    """The body as JSON with non-ASCII characters escaped: a lone surrogate travels as `\\ud800`."""
    return json.dumps(body).encode()


def _namespace() -> str:
    return "drill-" + uuid.uuid4().hex[:8]


def _body(text: str, namespace: str, document_id: str, **metadata: Any) -> dict[str, Any]:
    return {"text": text, "namespace": namespace, "document_id": document_id, "metadata": {"title": "t", **metadata}}


def _stored_text(pipeline: Pipeline, namespace: str, document_id: str) -> dict[str, str | None]:
    """The document's objects in MinIO: key → the text its record holds."""
    client, bucket = minio_client(pipeline.infra.minio), pipeline.env["RAGTRACE_MINIO_BUCKET"]
    stored = {}
    for item in client.list_objects(bucket, prefix=f"{namespace}/{document_id}"):
        response = client.get_object(bucket, item.object_name)
        try:
            stored[item.object_name] = json.loads(response.read())["text"]
        finally:
            response.close()
            response.release_conn()
    return stored


def test_concurrent_posts_of_one_document_converge_on_one_version(faiss_pipeline: Pipeline) -> None:
    namespace, documents = _namespace(), ["log-a", "log-b", "log-c"]
    versions = {
        d: [f"Harbour log {d}, version {i}: the tide turned at {i} o'clock and the ferry left late." for i in range(20)]
        for d in documents
    }

    def round_of_posts(document_id: str) -> list[httpx.Response]:
        """Twenty clients, connected first, post their versions of one document at the same moment."""
        start = threading.Barrier(len(versions[document_id]))

        def post(text: str) -> httpx.Response:
            with faiss_pipeline.http() as client:
                client.get("/healthz")
                start.wait()
                return client.post("/ingest", json=_body(text, namespace, document_id))

        with concurrent.futures.ThreadPoolExecutor(len(versions[document_id])) as pool:
            return list(pool.map(post, versions[document_id]))

    responses = [r for d in documents for r in round_of_posts(d)]
    assert [r.status_code for r in responses] == [202] * len(responses), [
        r.text for r in responses if r.status_code != 202
    ]

    finals = faiss_pipeline.wait_for(documents, namespace, timeout_s=120)
    faiss_pipeline.wait_drained()
    with faiss_pipeline.vector_store() as store:
        hits = store.keyword_search(namespace, "harbour", 100)
    indexed = {h.document_id: h.content for h in hits}
    assert len(hits) == len(documents), "one chunk per document: a single version of each is indexed"
    for document_id in documents:
        final = faiss_pipeline.status(document_id, namespace)
        assert final["status"] == "indexed" and final == finals[document_id], final
        assert content_hash(indexed[document_id]) == final["content_hash"], "the index holds the version described"
        stored = _stored_text(faiss_pipeline, namespace, document_id)
        assert stored == {final["key"]: indexed[document_id]}, "that version, and only it, is stored"

    # A re-post always repairs: whatever the state, a new version replaces it end to end.
    repair = "Harbour log, final version: the ferry left on time."
    faiss_pipeline.ingest(repair, namespace, "log-a")
    wait_until(
        lambda: (
            faiss_pipeline.status("log-a", namespace)["content_hash"] == content_hash(repair)
            and faiss_pipeline.status("log-a", namespace)["status"] == "indexed"
        ),
        timeout_s=60,
        what="the re-posted version indexed",
    )
    with faiss_pipeline.vector_store() as store:
        assert [
            h.content for h in store.keyword_search(namespace, "ferry on time", 50) if h.document_id == "log-a"
        ] == [repair]


class _Posters:
    """Threads posting distinct documents until stopped, recording each answer's status code and time."""

    def __init__(self, pipeline: Pipeline, namespace: str, threads: int = 4) -> None:
        self.pipeline, self.namespace = pipeline, namespace
        self.outcomes: list[tuple[str, int, float]] = []
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with self.pipeline.http() as client:
            while not self._stop.is_set():
                document_id = f"doc-{next(self._ids)}"
                text = f"Document {document_id} about lighthouses, accepted or refused during a broker restart."
                response = client.post("/ingest", json=_body(text, self.namespace, document_id))
                self.outcomes.append((document_id, response.status_code, time.monotonic()))

    def count(self, code: int, after: float = 0.0) -> int:
        return sum(1 for _, c, at in list(self.outcomes) if c == code and at > after)

    def ids(self, code: int) -> list[str]:
        return [d for d, c, _ in self.outcomes if c == code]

    @contextmanager
    def running(self) -> Iterator[_Posters]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=30)


def test_a_broker_restart_under_load_loses_nothing_accepted_and_ingestion_recovers(
    faiss_pipeline: Pipeline, infra: Infra
) -> None:
    supervisor, kafka = session_server(infra, "kafka")
    namespace = _namespace()
    with _Posters(faiss_pipeline, namespace).running() as posters:
        wait_until(lambda: posters.count(202) >= 8, timeout_s=60, what="documents accepted before the restart")
        supervisor.stop(kafka)  # publishes are in flight from four clients
        try:
            wait_until(lambda: posters.count(503) >= 4, timeout_s=30, what="refusals while Kafka is down")
        finally:
            supervisor.start(kafka)
        back = time.monotonic()
        wait_until(lambda: posters.count(202, after=back) >= 4, timeout_s=60, what="ingestion to recover by itself")
    recovered_after = min(at for _, code, at in posters.outcomes if code == 202 and at > back) - back

    codes = {code for _, code, _ in posters.outcomes}
    assert codes <= {202, 503}, f"only accepted or refused, got {codes}"
    with faiss_pipeline.http() as client:
        assert client.get("/readyz").status_code == 200
    accepted, refused = posters.ids(202), posters.ids(503)
    faiss_pipeline.wait_for(accepted, namespace, timeout_s=180)
    faiss_pipeline.wait_drained(timeout_s=120)
    # Read as a client would: a status read that meets MinIO slow on this loaded machine is a 503 to retry.
    statuses = faiss_pipeline.wait_for(refused, namespace, states=OUTCOMES, timeout_s=60)
    assert all(s["status"] == "failed" and "not accepted" in s["error"] for s in statuses.values()), statuses
    with faiss_pipeline.vector_store() as store:
        assert store.count(namespace) == len(accepted), "every accepted document indexed once, no refused one"
    assert recovered_after < 30, f"ingestion took {recovered_after:.1f}s to recover"


def test_a_frozen_minio_gives_503s_at_its_deadline_and_recovers(faiss_pipeline: Pipeline, infra: Infra) -> None:
    supervisor, _ = session_server(infra, "minio")
    pid = supervisor.pid("minio")
    assert pid is not None
    namespace = _namespace()
    faiss_pipeline.ingest("Stored before MinIO froze.", namespace, "before")
    calls: dict[str, Callable[[httpx.Client], httpx.Response]] = {
        "POST /ingest": lambda c: c.post("/ingest", json=_body("Posted while MinIO is frozen.", namespace, "frozen")),
        "POST /ingest/file": lambda c: c.post(
            "/ingest/file", files={"file": ("a.txt", b"Uploaded while frozen.")}, data={"namespace": namespace}
        ),
        "GET /ingest/{id}": lambda c: c.get("/ingest/before", params={"namespace": namespace}),
        "DELETE /documents/{id}": lambda c: c.delete("/documents/before", params={"namespace": namespace}),
        "GET /readyz": lambda c: c.get("/readyz"),
    }
    answers: dict[str, tuple[httpx.Response, float]] = {}
    with faiss_pipeline.http() as client, frozen(pid):
        for name, call in calls.items():
            answers[name] = timed(lambda: call(client))  # noqa: B023  # called at once, inside the loop
    for name, (response, elapsed) in answers.items():
        assert response.status_code == 503, f"{name}: {response.status_code} {response.text}"
        assert "minio" in response.json()["message"], name
        assert elapsed < ONE_DEADLINE_S, f"{name} took {elapsed:.2f}s"
        assert "HTTPConnectionPool" not in response.text and "Error(" not in response.text, "no client internals"
    faiss_pipeline.ingest("Posted after MinIO continued.", namespace, "after")
    faiss_pipeline.wait_for(["before", "after"], namespace)


def test_a_frozen_embedding_service_gives_a_503_at_its_deadline(faiss_pipeline: Pipeline) -> None:
    pid = faiss_pipeline.supervisor.pid("embedding-service")
    assert pid is not None
    namespace = _namespace()
    faiss_pipeline.ingest("A document about icebergs.", namespace, "iceberg")
    faiss_pipeline.wait_for(["iceberg"], namespace)
    query = "icebergs " + uuid.uuid4().hex  # not in the embedding cache
    with frozen(pid):
        response, elapsed = timed(lambda: faiss_pipeline.search(query=query, namespace=namespace, generate=False))
    assert response.status_code == 503 and response.json()["dependency"] == "embedding-service", response.text
    assert elapsed < ONE_DEADLINE_S, f"took {elapsed:.2f}s"
    assert faiss_pipeline.search(query=query, namespace=namespace, generate=False).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": f"a{SURROGATE}b"}, "text"),
        ({"metadata": {"title": SURROGATE}}, "metadata.title"),
        ({"metadata": {"title": "t", "source": SURROGATE}}, "metadata.source"),
        ({"metadata": {"title": "t", "tags": ["ok", {"deep": SURROGATE}]}}, "metadata.tags[1].deep"),
        ({"metadata": {"title": "t", SURROGATE: "key"}}, "metadata"),
    ],
    ids=["text", "title", "metadata-value", "nested-value", "metadata-key"],
)
def test_lone_surrogates_in_a_document_get_a_422_naming_the_field(
    faiss_pipeline: Pipeline, body: dict[str, Any], field: str
) -> None:
    document = {**_body("ok", _namespace(), "s"), **body}
    with faiss_pipeline.http() as client:
        response = client.post("/ingest", content=_escaped(document), headers=JSON)
        upload = client.post(
            "/ingest/file",
            files={"file": ("a.txt", b"fine text")},
            data={"metadata": json.dumps({"note": SURROGATE})},
        )
        alive = client.get("/healthz")  # the connection survived
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"
    assert field in response.json()["message"]
    assert upload.status_code == 422 and "metadata.note" in upload.json()["message"], upload.text
    assert alive.status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": SURROGATE}, "query"),
        ({"query": "ok", "filters": {"source": SURROGATE}}, "filters"),
        ({"query": "ok", "filters": {SURROGATE: "x"}}, "filters"),
    ],
    ids=["query", "filter-value", "filter-key"],
)
def test_lone_surrogates_in_a_search_get_a_422_naming_the_field(
    faiss_pipeline: Pipeline, body: dict[str, Any], field: str
) -> None:
    with faiss_pipeline.http() as client:
        response = client.post(f"{faiss_pipeline.search_url}/api/search", content=_escaped(body), headers=JSON)
    assert response.status_code == 422, response.text
    assert field in response.json()["message"]


@pytest.mark.parametrize(
    ("content", "why"),
    [(b'{"text": "\xff\xfe", "metadata": {"title": "t"}}', "invalid UTF-8"), (b"[" * 5000 + b"]" * 5000, "deep")],
    ids=["invalid-utf8", "nested-5000-deep"],
)
def test_unparseable_bodies_get_the_documented_422(faiss_pipeline: Pipeline, content: bytes, why: str) -> None:
    with faiss_pipeline.http(**JSON) as client:
        response = client.post("/ingest", content=content)
    assert response.status_code == 422, f"{why}: {response.text}"
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"top_k": "5"}, "top_k"), ({"generate": 0}, "generate"), ({"max_tokens": 1.5}, "max_tokens")],
    ids=["top_k-string", "generate-int", "max_tokens-float"],
)
def test_search_fields_are_strictly_typed(faiss_pipeline: Pipeline, body: dict[str, Any], field: str) -> None:
    response = faiss_pipeline.search(query="lighthouses", **body)
    assert response.status_code == 422, response.text
    assert field in response.json()["message"]


@pytest.mark.parametrize("document_id", [".", ".."])
def test_dot_segment_document_ids_are_refused(faiss_pipeline: Pipeline, document_id: str) -> None:
    with faiss_pipeline.http() as client:
        response = client.post("/ingest", json=_body("ok", _namespace(), document_id))
    assert response.status_code == 422 and "document_id" in response.json()["message"], response.text


def test_oversized_headers_get_a_431(faiss_pipeline: Pipeline) -> None:
    with faiss_pipeline.http(**{"X-Padding": "a" * (64 * 1024)}) as client:
        response = client.get("/healthz")
    assert response.status_code == 431, response.text
    assert response.json()["error"] == "headers_too_large"


def test_error_answers_and_media_types_are_in_the_openapi_description(faiss_pipeline: Pipeline) -> None:
    ingest = httpx.get(f"{faiss_pipeline.base_url}/openapi.json").json()
    gateway = httpx.get(f"{faiss_pipeline.search_url}/openapi.json").json()
    status_of = ingest["paths"]["/ingest/{document_id}"]["get"]["responses"]
    upload = ingest["paths"]["/ingest/file"]["post"]["responses"]
    assert status_of["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "415" in upload and "422" in upload and "503" in upload
    assert list(ingest["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    stream = gateway["paths"]["/api/search/stream"]["post"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
