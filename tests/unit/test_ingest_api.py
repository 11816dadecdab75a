"""The ingest API's HTTP contract, with the use cases replaced by an in-memory fake: status codes, error
bodies and headers as the integration tier sees them, without a server."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ingest.app import create_app
from ingest.deps import get_ingestion
from ingest.ingestion import Ingestion
from ragtrace.auth import AuthSettings
from ragtrace.errors import ConcurrentUpdate, DependencyUnavailable, DocumentNotFound
from ragtrace.schemas import MAX_BATCH_DOCUMENTS, DocumentInput, DocumentState, DocumentStatus, IngestAccepted

KEY, TENANT_KEY = "test-key", "tenant-key"


class FakeIngestion:
    """Ingestion's interface over a dict; `failure` is raised by the next change, `down` by readiness."""

    def __init__(self) -> None:
        self.documents: dict[tuple[str, str], DocumentStatus] = {}
        self.failure: Exception | None = None
        self.down: dict[str, Exception] = {}

    def _fail(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def accept(
        self, namespace: str, document_id: str | None, text: str, metadata: dict[str, Any]
    ) -> IngestAccepted:
        self._fail()
        document_id = document_id or "generated"
        status = DocumentStatus(document_id=document_id, namespace=namespace, status=DocumentState.ACCEPTED)
        self.documents[namespace, document_id] = status
        return IngestAccepted(
            document_id=document_id,
            namespace=namespace,
            status=status.status,
            bucket="documents",
            key=f"{namespace}/{document_id}/1.json",
            content_hash="sha256:x",
            trace_id="0" * 32,
        )

    async def accept_batch(
        self, namespace: str, documents: Sequence[DocumentInput]
    ) -> list[IngestAccepted | ConcurrentUpdate]:
        self._fail()
        return [
            await self.accept(namespace, d.document_id or f"generated-{i}", d.text, d.metadata.model_dump())
            for i, d in enumerate(documents)
        ]

    async def statuses(self, namespace: str, document_ids: Sequence[str]) -> dict[str, DocumentStatus | None]:
        return {d: self.documents.get((namespace, d)) for d in document_ids}

    async def delete(self, namespace: str, document_id: str) -> DocumentStatus:
        self._fail()
        status = await self.status_of(namespace, document_id)
        status = status.model_copy(update={"status": DocumentState.DELETING})
        self.documents[namespace, document_id] = status
        return status

    async def status_of(self, namespace: str, document_id: str) -> DocumentStatus:
        if (namespace, document_id) not in self.documents:
            raise DocumentNotFound(namespace, document_id)
        return self.documents[namespace, document_id]

    async def check_kafka(self) -> None:
        if "kafka" in self.down:
            raise self.down["kafka"]

    async def check_minio(self) -> None:
        if "minio" in self.down:
            raise self.down["minio"]


@pytest.fixture
def ingestion() -> FakeIngestion:
    return FakeIngestion()


@pytest.fixture
def client(ingestion: FakeIngestion) -> TestClient:
    app = create_app()
    app.state.auth = AuthSettings(api_keys={KEY: ["*"], TENANT_KEY: ["tenant-a"]})
    app.dependency_overrides[get_ingestion] = lambda: ingestion
    return TestClient(app, headers={"X-API-Key": KEY})  # not entered: no lifespan, nothing to connect to


def _document(**fields: Any) -> dict[str, Any]:
    return {"text": "Kafka is a log.", "metadata": {"title": "Kafka"}, **fields}


def test_a_document_is_accepted_with_202(client: TestClient) -> None:
    response = client.post("/ingest", json=_document(namespace="team-a", document_id="kafka-101"))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["document_id"] == "kafka-101" and body["status"] == "accepted" and body["namespace"] == "team-a"
    assert set(body) == set(IngestAccepted.model_fields)


def test_the_status_of_a_document(client: TestClient, ingestion: FakeIngestion) -> None:
    client.post("/ingest", json=_document(document_id="d1"))
    response = client.get("/ingest/d1")
    assert response.status_code == 200 and response.json()["status"] == "accepted"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_document(namespace="Team A"), "namespace"),
        (_document(text="   "), "text"),
        ({"text": "x", "metadata": {}}, "metadata.title"),
        (_document(document_id=".."), "document_id"),
        (_document(unknown=1), "unknown"),
    ],
    ids=["namespace", "blank-text", "title", "dot-segment", "extra-field"],
)
def test_an_invalid_document_is_a_422_naming_the_field(client: TestClient, body: dict[str, Any], field: str) -> None:
    response = client.post("/ingest", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request" and field in response.json()["message"]


def test_an_unknown_document_is_a_404(client: TestClient) -> None:
    for response in (client.get("/ingest/absent?namespace=team-a"), client.delete("/documents/absent")):
        assert response.status_code == 404, response.text
        assert response.json() == {"error": "not_found", "message": response.json()["message"]}
        assert "absent" in response.json()["message"]


def test_a_deletion_is_accepted_with_202(client: TestClient) -> None:
    client.post("/ingest", json=_document(document_id="d1"))
    response = client.delete("/documents/d1")
    assert response.status_code == 202 and response.json()["status"] == "deleting"


def test_a_concurrent_update_is_a_409_to_retry(client: TestClient, ingestion: FakeIngestion) -> None:
    ingestion.failure = ConcurrentUpdate("too many concurrent writes of team-a/d1")
    response = client.post("/ingest", json=_document(document_id="d1"))
    assert response.status_code == 409 and response.headers["Retry-After"] == "1"
    assert response.json() == {"error": "conflict", "message": "too many concurrent writes of team-a/d1"}


@pytest.mark.parametrize("dependency", ["kafka", "minio"])
def test_a_dependency_down_is_a_503_naming_it(client: TestClient, ingestion: FakeIngestion, dependency: str) -> None:
    ingestion.failure = DependencyUnavailable(dependency, "no answer")
    response = client.post("/ingest", json=_document())
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["dependency"] == dependency and dependency in response.json()["message"]


def test_readiness_names_the_dependency_that_is_down(client: TestClient, ingestion: FakeIngestion) -> None:
    assert client.get("/readyz").json() == {"status": "ready", "dependencies": ["kafka", "minio"]}
    ingestion.down["minio"] = DependencyUnavailable("minio", "no answer")
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["message"] == "unavailable: minio"


def test_keys_and_namespaces(client: TestClient) -> None:
    assert client.post("/ingest", json=_document(), headers={"X-API-Key": "wrong"}).status_code == 401
    refused = client.post("/ingest", json=_document(namespace="tenant-b"), headers={"X-API-Key": TENANT_KEY})
    assert refused.status_code == 403 and "tenant-b" in refused.json()["message"]


def test_uploads(client: TestClient) -> None:
    accepted = client.post("/ingest/file", files={"file": ("a.md", b"# Title\n\nSome text.")})
    assert accepted.status_code == 202, accepted.text
    unsupported = client.post("/ingest/file", files={"file": ("a.exe", b"MZ")})
    assert unsupported.status_code == 415 and unsupported.json()["error"] == "unsupported_media_type"
    bad_metadata = client.post("/ingest/file", files={"file": ("a.txt", b"text")}, data={"metadata": "[1]"})
    assert bad_metadata.status_code == 422 and "JSON object" in bad_metadata.json()["message"]


def test_a_batch_answers_each_document_by_position(client: TestClient, ingestion: FakeIngestion) -> None:
    documents = [
        _document(document_id="good-1"),
        _document(document_id="blank", text=" "),
        {"text": "no title", "metadata": {}},
        _document(document_id="bad id!"),
        _document(document_id="surrogate", text="\ud800"),
        _document(document_id="good-1", text="again"),
        "not an object",
        _document(document_id="good-2"),
    ]
    body = json.dumps({"namespace": "team-a", "documents": documents})  # ASCII: the surrogate as \\ud800
    response = client.post("/ingest/batch", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 202, response.text
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (2, 6)
    results = answer["results"]
    assert [r["index"] for r in results] == list(range(len(documents)))
    assert [r["document_id"] for r in results if r.get("error") is None] == ["good-1", "good-2"]
    assert all(r["status"] == "accepted" and r["trace_id"] for r in results if r.get("error") is None)
    fields = {r["index"]: r["error"]["field"] for r in results if r.get("error")}
    assert fields == {
        1: "documents[1].text",
        2: "documents[2].metadata.title",
        3: "documents[3].document_id",
        4: "documents[4].text",
        5: "documents[5].document_id",
        6: "documents[6]",
    }
    assert "lone surrogate" in results[4]["error"]["message"] and "documents[0]" in results[5]["error"]["message"]
    assert set(ingestion.documents) == {("team-a", "good-1"), ("team-a", "good-2")}


def test_a_batch_as_ndjson_takes_its_namespace_from_the_query(client: TestClient, ingestion: FakeIngestion) -> None:
    lines = [json.dumps(_document(document_id="n1")), "{not json", "", json.dumps(_document(document_id="n2"))]
    response = client.post(
        "/ingest/batch?namespace=team-b",
        content="\n".join(lines).encode(),
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert body["results"][1]["error"]["field"] == "documents[1]"
    assert set(ingestion.documents) == {("team-b", "n1"), ("team-b", "n2")}


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({"documents": []}, 422, "at least one"),
        ({"namespace": "Bad NS", "documents": [_document()]}, 422, "namespace"),
        ({"documents": [_document()], "extra": 1}, 422, "extra"),
        ({"documents": "x"}, 422, "documents"),
        ({"documents": [_document()] * (MAX_BATCH_DOCUMENTS + 1)}, 413, f"limit of {MAX_BATCH_DOCUMENTS}"),
    ],
    ids=["empty", "namespace", "extra-field", "not-a-list", "too-many"],
)
def test_a_batch_that_cannot_be_read_is_refused_whole(
    client: TestClient, ingestion: FakeIngestion, body: dict[str, Any], code: int, fragment: str
) -> None:
    response = client.post("/ingest/batch", json=body)
    assert response.status_code == code, response.text
    assert fragment in response.json()["message"] and not ingestion.documents


def test_a_batch_is_refused_whole_when_a_dependency_is_down(client: TestClient, ingestion: FakeIngestion) -> None:
    ingestion.failure = DependencyUnavailable("kafka", "no answer")
    response = client.post("/ingest/batch", json={"documents": [_document()]})
    assert response.status_code == 503 and response.json()["dependency"] == "kafka"


def test_a_batch_checks_the_namespace_against_the_key(client: TestClient) -> None:
    body = {"namespace": "tenant-b", "documents": [_document()]}
    assert client.post("/ingest/batch", json=body, headers={"X-API-Key": TENANT_KEY}).status_code == 403
    assert (
        client.post(
            "/ingest/status", json={"namespace": "tenant-b", "document_ids": ["x"]}, headers={"X-API-Key": TENANT_KEY}
        ).status_code
        == 403
    )


def test_many_statuses_at_once(client: TestClient) -> None:
    client.post("/ingest", json=_document(document_id="d1"))
    response = client.post("/ingest/status", json={"document_ids": ["d1", "absent"]})
    assert response.status_code == 200, response.text
    documents = response.json()["documents"]
    assert documents["d1"]["status"] == "accepted" and documents["absent"] is None


def _multipart(fields: dict[str, bytes], filename: str = "a.txt", data: bytes = b"text") -> tuple[bytes, str]:
    """A multipart body written by hand, so that a field can carry bytes that are not UTF-8."""
    parts = [
        b'--B\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (name.encode(), value)
        for name, value in fields.items()
    ]
    parts.append(
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n\r\n%s\r\n' % (filename.encode(), data)
    )
    return b"".join(parts) + b"--B--\r\n", "multipart/form-data; boundary=B"


@pytest.mark.parametrize(
    ("field", "value"),
    [("title", b"\xed\xa0\x80"), ("title", b"ab\xffcd"), ("metadata", b'{"k":"v\xff"}'), ("namespace", b"\xff")],
    ids=["surrogate-bytes", "title", "metadata", "namespace"],
)
def test_an_upload_whose_field_is_not_utf8_is_a_422_naming_it(
    client: TestClient, ingestion: FakeIngestion, field: str, value: bytes
) -> None:
    body, content_type = _multipart({field: value})
    response = client.post("/ingest/file", content=body, headers={"content-type": content_type})
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(f"{field}: not valid UTF-8") and not ingestion.documents


def test_an_upload_is_validated_as_a_document_is(client: TestClient, ingestion: FakeIngestion) -> None:
    body, content_type = _multipart({"title": "Café".encode(), "document_id": b"caf\xc3\xa9"})
    refused = client.post("/ingest/file", content=body, headers={"content-type": content_type})
    assert refused.status_code == 422 and "document_id" in refused.json()["message"]
    body, content_type = _multipart({"title": "Café".encode(), "document_id": b"cafe"}, data=b"   ")
    blank = client.post("/ingest/file", content=body, headers={"content-type": content_type})
    assert blank.status_code == 422 and "text" in blank.json()["message"]
    body, content_type = _multipart({"title": "Café".encode(), "document_id": b"cafe"})
    accepted = client.post("/ingest/file", content=body, headers={"content-type": content_type})
    assert accepted.status_code == 202, accepted.text
    assert ingestion.documents["default", "cafe"].status == "accepted"


def test_the_openapi_description_says_what_the_bodies_hold(client: TestClient) -> None:
    description = client.get("/openapi.json").json()
    batch = description["paths"]["/ingest/batch"]["post"]["requestBody"]["content"]
    assert set(batch) == {"application/json", "application/x-ndjson"}
    schemas = description["components"]["schemas"]
    documents = schemas["IngestBatchRequest"]["properties"]["documents"]
    assert documents["maxItems"] == MAX_BATCH_DOCUMENTS and documents["items"]["$ref"].endswith("/DocumentInput")
    assert schemas["DocumentInput"]["properties"]["text"]["minLength"] == 1
    upload = description["paths"]["/ingest/file"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["required"] == ["file"]


def test_the_openapi_description_has_the_error_bodies(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    status_of = paths["/ingest/{document_id}"]["get"]["responses"]
    assert status_of["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert paths["/ingest"]["post"]["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/IngestAccepted"
    )


def test_the_fake_has_the_use_cases_interface() -> None:
    """The fake stands in for Ingestion: every public method of one is a method of the other."""
    public = {name for name in vars(Ingestion) if not name.startswith("_")}
    assert public <= set(vars(FakeIngestion))
