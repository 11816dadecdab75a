"""Query vectors must come from the model that indexed the namespace: the FAISS store records the model
with every write (in a temporary folder here), and the search service refuses a query embedded with another
(gRPC FAILED_PRECONDITION naming both; the gateway answers 409, tests/unit/test_search_gateway.py)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import grpc
import pytest

from query.server import SearchServicer
from ragtrace.errors import ModelMismatch
from ragtrace.v1 import search_pb2
from ragtrace.vectorstore import EmbeddingModel
from ragtrace.vectorstore.faiss_store import FaissStore
from tests.unit.search_fakes import DIMENSION, MODEL, Aborted, AbortingContext, FixedEmbedder, document, search_service

NAMESPACE = "team-a"
INDEXED = EmbeddingModel(MODEL, DIMENSION)


@pytest.fixture
def store(tmp_path: Path) -> FaissStore:
    store = FaissStore(tmp_path)
    store.write(NAMESPACE, [document("bread", "Sourdough bread rises overnight.")], [])
    return store


def test_a_write_records_the_namespaces_model(store: FaissStore) -> None:
    assert store.embedding_model(NAMESPACE) == INDEXED
    assert store.embedding_model("never-written") is None


def test_another_models_vectors_are_refused_while_the_namespace_holds_chunks(store: FaissStore) -> None:
    with pytest.raises(ModelMismatch) as refused:
        store.write(NAMESPACE, [document("tides", "The moon raises the tides.", model="other-model", dimension=8)], [])
    assert "test-model" in str(refused.value) and "other-model" in str(refused.value)
    assert store.count(NAMESPACE) == 1 and store.embedding_model(NAMESPACE) == INDEXED, "rolled back"


def test_replacing_every_chunk_may_change_the_model(store: FaissStore) -> None:
    store.write(NAMESPACE, [document("bread", "Rye bread.", model="other-model", dimension=8)], [])
    assert store.embedding_model(NAMESPACE) == EmbeddingModel("other-model", 8)


def test_an_emptied_namespace_has_no_model(store: FaissStore) -> None:
    store.write(NAMESPACE, [], ["bread"])
    assert store.embedding_model(NAMESPACE) is None
    store.write(NAMESPACE, [document("tides", "Tides.", model="other-model", dimension=8)], [])
    assert store.embedding_model(NAMESPACE) == EmbeddingModel("other-model", 8)


def _request(mode: search_pb2.SearchMode, namespace: str = NAMESPACE) -> search_pb2.SearchRequest:
    return search_pb2.SearchRequest(query="why does bread rise", namespace=namespace, mode=mode, generate=False)


async def _search(
    tmp_path: Path, store: FaissStore, embedder: FixedEmbedder, request: search_pb2.SearchRequest
) -> search_pb2.SearchResponse:
    store.close()
    servicer = SearchServicer(search_service(tmp_path, embedder))
    return await servicer.Search(request, cast(grpc.aio.ServicerContext, AbortingContext()))


@pytest.mark.parametrize("mode", [search_pb2.SEARCH_MODE_VECTOR, search_pb2.SEARCH_MODE_HYBRID])
async def test_the_indexing_model_finds_the_chunks(
    tmp_path: Path, store: FaissStore, mode: search_pb2.SearchMode
) -> None:
    response = await _search(tmp_path, store, FixedEmbedder(), _request(mode))
    assert [s.document_id for s in response.sources] == ["bread"]


@pytest.mark.parametrize(
    ("embedder", "named"),
    [(FixedEmbedder("other-model", 8), "'other-model' (dimension 8)"), (FixedEmbedder(MODEL, 8), "(dimension 8)")],
    ids=["other-model", "other-dimension"],
)
@pytest.mark.parametrize("mode", [search_pb2.SEARCH_MODE_VECTOR, search_pb2.SEARCH_MODE_HYBRID])
async def test_another_models_query_is_failed_precondition_naming_both(
    tmp_path: Path, store: FaissStore, embedder: FixedEmbedder, named: str, mode: search_pb2.SearchMode
) -> None:
    with pytest.raises(Aborted) as refused:
        await _search(tmp_path, store, embedder, _request(mode))
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert str(INDEXED) in refused.value.details and named in refused.value.details


async def test_keyword_search_uses_no_vectors_so_any_model_may_ask(tmp_path: Path, store: FaissStore) -> None:
    response = await _search(tmp_path, store, FixedEmbedder("other-model", 8), _request(search_pb2.SEARCH_MODE_KEYWORD))
    assert [s.document_id for s in response.sources] == ["bread"]


async def test_an_unknown_namespace_is_still_not_found(tmp_path: Path, store: FaissStore) -> None:
    with pytest.raises(Aborted) as refused:
        await _search(tmp_path, store, FixedEmbedder("other-model", 8), _request(search_pb2.SEARCH_MODE_VECTOR, "nope"))
    assert refused.value.code is grpc.StatusCode.NOT_FOUND


async def test_an_emptied_namespace_gives_no_results_to_any_model(tmp_path: Path, store: FaissStore) -> None:
    store.write(NAMESPACE, [], ["bread"])
    response = await _search(tmp_path, store, FixedEmbedder("other-model", 8), _request(search_pb2.SEARCH_MODE_VECTOR))
    assert list(response.sources) == []
