"""The gateway's HTTP contract with the search client replaced by a fake: the JSON and SSE shapes, the gRPC
status → HTTP mapping, and the response schema in the OpenAPI description."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import Any, cast

import grpc
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from query.app import create_app
from query.deps import get_ingest_client, get_search_client, get_trace_query
from query.gateway import SearchClient
from ragtrace.auth import AuthSettings
from ragtrace.errors import DependencyUnavailable
from ragtrace.ingest_client import AsyncIngestClient
from ragtrace.settings import TraceQuerySettings
from ragtrace.v1 import search_pb2
from ragtrace_tools.devstack.servers import free_port
from tests.pipeline import ONE_DEADLINE_S, server_sent_events

KEY = "test-key"


def _response() -> search_pb2.SearchResponse:
    response = search_pb2.SearchResponse(answer="Sourdough rises [1].")
    source = response.sources.add(id="bread:0", document_id="bread", content="Sourdough bread rises.", score=0.5)
    source.metadata.update({"title": "Bread", "chunk_no": 0, "start": 0, "end": 22})
    response.metadata.trace_id = "b" * 32
    response.metadata.mode = search_pb2.SEARCH_MODE_HYBRID
    response.metadata.num_sources = 1
    response.metadata.generator = "llm"
    return response


def _rpc_error(code: grpc.StatusCode, details: str, **trailing: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing.items()), details)


class FakeCall:
    def __init__(self, events: list[search_pb2.SearchEvent], error: grpc.aio.AioRpcError | None) -> None:
        self.events = events
        self.error = error

    async def read(self) -> Any:
        if self.events:
            return self.events.pop(0)
        if self.error is not None:
            raise self.error
        return grpc.aio.EOF


class FakeSearchClient:
    def __init__(self) -> None:
        self.requests: list[search_pb2.SearchRequest] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.ready_error: Exception | None = None

    async def search(self, request: search_pb2.SearchRequest) -> search_pb2.SearchResponse:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return _response()

    async def stream(self, request: search_pb2.SearchRequest) -> FakeCall:
        self.requests.append(request)
        response = _response()
        answer, response.answer = response.answer, ""
        events = [search_pb2.SearchEvent(sources=response)]
        events += [search_pb2.SearchEvent(token=word + " ") for word in answer.split(" ")]
        events.append(search_pb2.SearchEvent(done=response.metadata))
        return FakeCall([] if self.error else events, self.error)  # failing before the first event

    async def ready(self) -> None:
        if self.ready_error is not None:
            raise self.ready_error


@pytest.fixture
def search_client() -> FakeSearchClient:
    return FakeSearchClient()


@pytest.fixture
def client(search_client: FakeSearchClient) -> TestClient:
    app = create_app()
    app.state.auth = AuthSettings(api_keys={KEY: ["team-a"]})
    app.dependency_overrides[get_search_client] = lambda: search_client
    return TestClient(app, headers={"X-API-Key": KEY})


def test_a_search_answers_with_the_proto_response_as_json(client: TestClient, search_client: FakeSearchClient) -> None:
    response = client.post("/api/search", json={"query": " sourdough ", "namespace": "team-a", "alpha": 0.2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == "Sourdough rises [1]."
    assert body["sources"][0]["metadata"] == {"title": "Bread", "chunk_no": 0, "start": 0, "end": 22}
    assert body["metadata"]["mode"] == "hybrid" and body["metadata"]["num_sources"] == 1
    [request] = search_client.requests
    assert request.query == "sourdough" and request.top_k == 5 and request.HasField("alpha")


def test_the_stream_gives_the_same_shapes_as_server_sent_events(client: TestClient) -> None:
    response = client.post("/api/search/stream", json={"query": "sourdough", "namespace": "team-a"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    # Starlette's TestClient answers with httpx2's Response, which httpx-sse reads as it reads httpx's.
    events = list(server_sent_events(cast(httpx.Response, response)))
    # What the page's reader takes: blocks ending in "\n\n", each one `event:` line and one `data:` line.
    blocks = response.text.split("\n\n")
    assert blocks[-1] == "" and all(re.fullmatch(r"event: \w+\ndata: [^\n]+", block) for block in blocks[:-1])
    plain = client.post("/api/search", json={"query": "sourdough", "namespace": "team-a"}).json()
    assert events[0] == ("sources", {"sources": plain["sources"], "metadata": plain["metadata"]})
    assert "".join(data["text"] for name, data in events if name == "token").strip() == plain["answer"]
    assert events[-1] == ("done", plain["metadata"])


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 422, "invalid_request"),
        (grpc.StatusCode.NOT_FOUND, 404, "not_found"),
        (grpc.StatusCode.FAILED_PRECONDITION, 409, "conflict"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout"),
        (grpc.StatusCode.INTERNAL, 502, "error"),
    ],
)
def test_grpc_statuses_become_http_statuses(
    client: TestClient, search_client: FakeSearchClient, code: grpc.StatusCode, status: int, error: str
) -> None:
    search_client.error = _rpc_error(code, "what went wrong")
    for path in ("/api/search", "/api/search/stream"):
        response = client.post(path, json={"query": "x", "namespace": "team-a"})
        assert response.status_code == status, response.text
        assert response.json()["error"] == error and "what went wrong" in response.json()["message"]


def test_a_model_mismatch_is_a_409_naming_both_models(client: TestClient, search_client: FakeSearchClient) -> None:
    message = "namespace 'team-a' is indexed with embedding model 'a' (dimension 4), but ... 'b' (dimension 8)"
    search_client.error = _rpc_error(grpc.StatusCode.FAILED_PRECONDITION, message)
    response = client.post("/api/search", json={"query": "x", "namespace": "team-a"})
    assert response.status_code == 409 and response.json()["message"] == message
    assert "Retry-After" not in response.headers, "asking again will not help"


def test_unavailable_is_a_503_naming_the_dependency(client: TestClient, search_client: FakeSearchClient) -> None:
    search_client.error = _rpc_error(grpc.StatusCode.UNAVAILABLE, "weaviate is unavailable", dependency="weaviate")
    response = client.post("/api/search", json={"query": "x", "namespace": "team-a"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["dependency"] == "weaviate"


def test_readiness_follows_the_search_service(client: TestClient, search_client: FakeSearchClient) -> None:
    assert client.get("/readyz").json() == {"status": "ready", "dependencies": ["search-service"]}
    search_client.ready_error = DependencyUnavailable("search-service", "not serving")
    assert client.get("/readyz").status_code == 503


def test_a_key_reaches_only_its_namespaces(client: TestClient) -> None:
    response = client.post("/api/search", json={"query": "x", "namespace": "team-b"})
    assert response.status_code == 403 and "team-b" in response.json()["message"]


def test_the_openapi_description_has_the_search_result_schema(client: TestClient) -> None:
    description = client.get("/openapi.json").json()
    search = description["paths"]["/api/search"]["post"]
    assert search["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchResult")
    assert search["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchQuery")
    schemas = description["components"]["schemas"]
    assert {"SearchResult", "SearchSource", "SearchMetadata", "SearchTimings"} <= set(schemas)
    top_k = schemas["SearchQuery"]["properties"]["top_k"]
    assert (top_k["minimum"], top_k["maximum"]) == (1, 100)
    assert list(search["responses"]) == ["200", "401", "403", "404", "409", "413", "415", "422", "431", "503"]
    stream = description["paths"]["/api/search/stream"]["post"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]


def test_the_fake_has_the_clients_interface() -> None:
    public = {name for name in vars(SearchClient) if not name.startswith("_")} - {"channel", "stub", "close"}
    assert public <= set(vars(FakeSearchClient))


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A real TCP listener that accepts connections and never answers: a frozen server."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize("frozen", [False, True], ids=["refused", "frozen"])
def test_tempo_or_the_ingest_api_not_answering_is_a_fast_503_naming_it(
    client: TestClient, silent_server: str, frozen: bool
) -> None:
    url = silent_server if frozen else f"http://127.0.0.1:{free_port()}"
    app = cast(FastAPI, client.app)
    app.dependency_overrides[get_trace_query] = lambda: TraceQuerySettings(url=url, timeout_s=1.0)
    app.dependency_overrides[get_ingest_client] = lambda: AsyncIngestClient(url, timeout=1.0)
    for path, dependency in (
        ("/api/traces/" + "a" * 32, "tempo"),
        ("/api/documents/bread?namespace=team-a", "ingest-api"),
    ):
        started = time.monotonic()
        response = client.get(path)
        assert response.status_code == 503, response.text
        assert response.json()["dependency"] == dependency and dependency in response.json()["message"]
        assert time.monotonic() - started < ONE_DEADLINE_S


def test_a_key_reads_only_its_namespaces_documents_and_a_trace_id_is_32_hex_digits(client: TestClient) -> None:
    app = cast(FastAPI, client.app)
    app.dependency_overrides[get_ingest_client] = lambda: AsyncIngestClient(
        f"http://127.0.0.1:{free_port()}", timeout=1.0
    )
    app.dependency_overrides[get_trace_query] = TraceQuerySettings
    refused = client.get("/api/documents/bread?namespace=team-b")
    assert refused.status_code == 403 and "team-b" in refused.json()["message"]
    malformed = client.get("/api/traces/ABC")
    assert malformed.status_code == 422 and "trace_id" in malformed.json()["message"]
