"""The query contract (ragtrace/query_contract.py) is one definition: the gateway's HTTP body and the search
service's gRPC validation refuse the same values with the same message, naming the field and the limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from query.app import create_app
from query.deps import get_search_client
from query.server import SearchServicer
from ragtrace.auth import AuthSettings
from ragtrace.query_contract import (
    MAX_GENERATED_TOKENS,
    MAX_QUERY_CHARS,
    MAX_TOP_K,
    SearchMetadata,
    SearchQuery,
    SearchResult,
)
from ragtrace.v1 import search_pb2
from tests.unit.search_fakes import Aborted, AbortingContext, search_service

KEY = "test-key"

# (HTTP body, the same request over gRPC, the limit the message names)
OUT_OF_RANGE: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    ({"top_k": MAX_TOP_K + 1}, {"top_k": MAX_TOP_K + 1}, f"less than or equal to {MAX_TOP_K}"),
    ({"top_k": -1}, {"top_k": -1}, "greater than or equal to 1"),
    ({"alpha": 1.5}, {"alpha": 1.5}, "less than or equal to 1"),
    ({"alpha": -0.5}, {"alpha": -0.5}, "greater than or equal to 0"),
    ({"max_tokens": MAX_GENERATED_TOKENS + 1}, {"max_tokens": MAX_GENERATED_TOKENS + 1}, str(MAX_GENERATED_TOKENS)),
    ({"query": "x" * (MAX_QUERY_CHARS + 1)}, {"query": "x" * (MAX_QUERY_CHARS + 1)}, f"at most {MAX_QUERY_CHARS}"),
    ({"query": "   "}, {"query": "   "}, "at least 1 character"),
    ({"namespace": "Bad NS"}, {"namespace": "Bad NS"}, "pattern"),
    ({"filters": {"": "x"}}, {"filters": {"": "x"}}, "at least 1 character"),
    ({"mode": "semantic"}, {"mode": 7}, "'vector', 'keyword' or 'hybrid'"),
]
IDS = [
    "top_k-high",
    "top_k-low",
    "alpha-high",
    "alpha-low",
    "max_tokens",
    "long",
    "blank",
    "namespace",
    "filter",
    "mode",
]


@pytest.fixture
def http() -> TestClient:
    app = create_app()
    app.state.auth = AuthSettings(api_keys={KEY: ["*"]})
    app.dependency_overrides[get_search_client] = lambda: None  # never reached: every request here is invalid
    return TestClient(app, headers={"X-API-Key": KEY})


async def _grpc_refusal(tmp_path: Path, fields: dict[str, Any]) -> Aborted:
    servicer = SearchServicer(search_service(tmp_path))
    request = search_pb2.SearchRequest(**{"query": "x", **fields})
    with pytest.raises(Aborted) as refused:
        await servicer.Search(request, cast(grpc.aio.ServicerContext, AbortingContext()))
    return refused.value


@pytest.mark.parametrize(("body", "proto", "limit"), OUT_OF_RANGE, ids=IDS)
async def test_http_and_grpc_refuse_the_same_value_with_the_same_message(
    http: TestClient, tmp_path: Path, body: dict[str, Any], proto: dict[str, Any], limit: str
) -> None:
    over_http = http.post("/api/search", json={"query": "x", **body})
    over_grpc = await _grpc_refusal(tmp_path, proto)
    assert over_http.status_code == 422 and over_grpc.code is grpc.StatusCode.INVALID_ARGUMENT
    field = next(iter(body))
    assert over_http.json()["message"].startswith(field) and limit in over_http.json()["message"]
    assert over_http.json()["message"] == over_grpc.details


async def test_grpc_names_every_problem_at_once(tmp_path: Path) -> None:
    refused = await _grpc_refusal(tmp_path, {"top_k": 500, "alpha": 2.0})
    assert "top_k: " in refused.details and "alpha: " in refused.details


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"top_k": "5"}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"alpha": True}, "alpha"),
        ({"alpha": "0.5"}, "alpha"),
        ({"generate": 0}, "generate"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"k": 1}, "k"),
    ],
    ids=["top_k-string", "top_k-bool", "alpha-bool", "alpha-string", "generate-int", "max_tokens-float", "unknown"],
)
def test_http_fields_are_strictly_typed(http: TestClient, body: dict[str, Any], field: str) -> None:
    response = http.post("/api/search", json={"query": "x", **body})
    assert response.status_code == 422 and field in response.json()["message"]


def test_a_whole_number_written_with_a_fraction_is_the_integer_the_schema_allows() -> None:
    """JSON Schema's `integer` holds 89.0; the contract takes it as 89 (and still refuses 89.5)."""
    assert SearchQuery.model_json_schema()["properties"]["top_k"]["type"] == "integer"
    assert SearchQuery.model_validate_json('{"query": "x", "top_k": 89.0, "max_tokens": 7.0}').top_k == 89
    with pytest.raises(ValidationError):
        SearchQuery.model_validate_json('{"query": "x", "top_k": 89.5}')


def _response() -> search_pb2.SearchResponse:
    response = search_pb2.SearchResponse(answer="An answer [1].")
    source = response.sources.add(id="d:0", document_id="d", content="text", score=0.123456789)
    source.metadata.update({"title": "D", "chunk_no": 0, "start": 0, "end": 4, "year": 2020.5})
    source.provenance.trace_id, source.provenance.span_id = "b" * 32, "c" * 16
    source.provenance.indexed_at, source.provenance.model = "2026-12-02T06:00:00+00:00", "all-MiniLM-L6-v2"
    response.metadata.trace_id = "a" * 32
    response.metadata.mode = search_pb2.SEARCH_MODE_KEYWORD
    response.metadata.top_k = 3
    response.metadata.alpha = 0.7
    response.metadata.timings_ms.embed = 1.23456
    return response


def test_the_result_is_the_proto_message_as_json() -> None:
    result = SearchResult.from_proto(_response()).model_dump(mode="json")
    assert result["answer"] == "An answer [1]."
    [source] = result["sources"]
    assert source == {
        "id": "d:0",
        "document_id": "d",
        "content": "text",
        "score": 0.123457,
        "metadata": {"title": "D", "chunk_no": 0, "start": 0, "end": 4, "year": 2020.5},
        "provenance": {
            "trace_id": "b" * 32,
            "span_id": "c" * 16,
            "indexed_at": "2026-12-02T06:00:00+00:00",
            "model": "all-MiniLM-L6-v2",
            "pipeline_version": "",
        },
    }
    assert type(source["metadata"]["chunk_no"]) is int
    metadata = result["metadata"]
    assert metadata["mode"] == "keyword" and metadata["alpha"] == 0.7 and metadata["top_k"] == 3
    assert metadata["timings_ms"] == {"embed": 1.23, "search": 0.0, "generate": 0.0, "total": 0.0}
    # Every field is there, zero values included, in the order the API has always given them.
    assert list(metadata) == list(SearchMetadata.model_fields)
    assert metadata["cache_hit"] is False and metadata["input_tokens"] == 0 and metadata["generator"] == ""


def test_an_unspecified_mode_reads_as_hybrid() -> None:
    assert SearchMetadata.from_proto(search_pb2.SearchMetadata()).mode == "hybrid"
