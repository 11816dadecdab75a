"""POST /api/search → gRPC SearchService → query embedding → vector / keyword / hybrid → Redis → LLM."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedding.settings import BUNDLED_MODEL
from ragtrace.cache import SearchCache
from ragtrace.errors import ModelMismatch
from ragtrace.v1 import search_pb2, search_pb2_grpc
from ragtrace.vectorstore import DocumentChunks, EmbeddingModel, IndexedChunk
from ragtrace_tools.devstack.services import ServicePorts, Services
from ragtrace_tools.devstack.supervisor import Supervisor
from tests.conftest import LLMServer
from tests.infra import Infra
from tests.pipeline import (
    API_KEY,
    LLM_API_KEY,
    TENANT_KEY,
    Pipeline,
    server_sent_events,
    session_server,
    timed,
    wait_until,
)

SEARCH_SERVICE = "ragtrace.v1.SearchService"
CORPUS = {
    "thermometer": (
        "Thermometers",
        "Daniel Gabriel Fahrenheit invented the mercury thermometer in 1714. Mercury expands evenly as it warms.",
    ),
    "volcano": ("Volcanoes", "A volcano erupts when magma rises through the crust. Basalt lava flows are runny."),
    "bread": ("Bread", "Sourdough bread rises because wild yeast ferments the dough overnight."),
    "rare": ("Minerals", "The fictional mineral zyxquorbium glows faintly under ultraviolet light."),
}


def _namespace() -> str:
    return "q-" + uuid.uuid4().hex[:10]


def _ingest_corpus(pipeline: Pipeline, namespace: str, corpus: dict[str, tuple[str, str]] = CORPUS) -> None:
    for document_id, (title, text) in corpus.items():
        pipeline.ingest(text, namespace, document_id, title=title, topic=document_id)
    pipeline.wait_for(list(corpus), namespace)


@pytest.fixture
def corpus_namespace(pipeline: Pipeline) -> str:
    namespace = _namespace()
    _ingest_corpus(pipeline, namespace)
    return namespace


def _search(pipeline: Pipeline, namespace: str, query: str, **options: Any) -> dict[str, Any]:
    response = pipeline.search(query=query, namespace=namespace, **options)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_each_mode_finds_the_ingested_document(pipeline: Pipeline, corpus_namespace: str, mode: str) -> None:
    body = _search(
        pipeline, corpus_namespace, "who invented the mercury thermometer", mode=mode, top_k=3, generate=False
    )
    sources = body["sources"]
    assert sources[0]["document_id"] == "thermometer"
    assert sources[0]["id"] == "thermometer:0"
    assert sources[0]["metadata"]["title"] == "Thermometers" and sources[0]["metadata"]["topic"] == "thermometer"
    scores = [s["score"] for s in sources]
    assert scores == sorted(scores, reverse=True) and len(sources) <= 3
    assert body["metadata"]["mode"] == mode and body["metadata"]["num_sources"] == len(sources)
    assert body["metadata"]["namespace"] == corpus_namespace and len(body["metadata"]["trace_id"]) == 32


def test_an_exact_rare_token_ranks_its_chunk_first_in_keyword_mode(pipeline: Pipeline, corpus_namespace: str) -> None:
    body = _search(pipeline, corpus_namespace, "zyxquorbium", mode="keyword", top_k=5, generate=False)
    assert [s["document_id"] for s in body["sources"]] == ["rare"], "only the chunk with the token matches"


def test_metadata_filters_keep_only_equal_values(faiss_pipeline: Pipeline) -> None:
    namespace = _namespace()
    _ingest_corpus(faiss_pipeline, namespace)
    body = _search(
        faiss_pipeline, namespace, "what rises?", mode="hybrid", top_k=5, generate=False, filters={"topic": "bread"}
    )
    assert [s["document_id"] for s in body["sources"]] == ["bread"]


def test_namespaces_never_see_each_other(pipeline: Pipeline) -> None:
    a, b = _namespace(), _namespace()
    _ingest_corpus(pipeline, a)
    _ingest_corpus(pipeline, b, {"b-only": ("Tides", "The moon's gravity raises the tides twice a day.")})
    for mode in ("vector", "keyword", "hybrid"):
        for query in ("mercury thermometer", "zyxquorbium", "tides and the moon"):
            sources = _search(pipeline, b, query, mode=mode, top_k=100, generate=False)["sources"]
            assert {s["document_id"] for s in sources} <= {"b-only"}, (mode, query)


def test_an_api_key_only_reaches_its_own_namespaces(faiss_pipeline: Pipeline) -> None:
    namespace = _namespace()
    faiss_pipeline.ingest("Tenant B's private note about tides.", namespace, "private")
    faiss_pipeline.wait_for(["private"], namespace)
    refused = faiss_pipeline.search(key=TENANT_KEY, query="tides", namespace=namespace)
    assert refused.status_code == 403 and namespace in refused.json()["message"]
    with httpx.Client(base_url=faiss_pipeline.base_url, headers={"X-API-Key": TENANT_KEY}) as client:
        assert client.get(f"/ingest/private?namespace={namespace}").status_code == 403
    assert faiss_pipeline.search(key="wrong", query="tides", namespace=namespace).status_code == 401


def test_unknown_namespace_is_a_404(faiss_pipeline: Pipeline) -> None:
    response = faiss_pipeline.search(query="anything", namespace="never-written-" + uuid.uuid4().hex[:6])
    assert response.status_code == 404 and "no documents" in response.json()["message"]


def test_repeating_a_search_hits_the_cache_and_ingesting_invalidates_it(pipeline: Pipeline) -> None:
    namespace = _namespace()
    _ingest_corpus(pipeline, namespace)
    query = "Which bread uses wild yeast?"
    options: dict[str, Any] = {"mode": "hybrid", "top_k": 10, "generate": False}
    first = _search(pipeline, namespace, query, **options)
    second = _search(pipeline, namespace, query, **options)
    assert first["metadata"]["cache_hit"] is False
    assert second["metadata"]["cache_hit"] is True
    assert second["sources"] == first["sources"]
    assert second["metadata"]["trace_id"] != first["metadata"]["trace_id"], "a cached answer has its own trace"

    pipeline.ingest("Rye bread also uses a sourdough starter with wild yeast.", namespace, "rye", title="Rye")
    pipeline.wait_for(["rye"], namespace)
    third = _search(pipeline, namespace, query, **options)
    assert third["metadata"]["cache_hit"] is False, "a write to the namespace invalidates its cached results"
    assert "rye" in {s["document_id"] for s in third["sources"]}


def test_the_answer_comes_from_the_llm_with_token_counts(faiss_pipeline: Pipeline, llm_server: LLMServer) -> None:
    namespace = _namespace()
    _ingest_corpus(faiss_pipeline, namespace)
    body = _search(faiss_pipeline, namespace, "Who invented the mercury thermometer?", generate=True)
    assert body["answer"] == "According to [1], Daniel Gabriel Fahrenheit invented the mercury thermometer in 1714."
    metadata = body["metadata"]
    assert metadata["generator"] == "llm" and metadata["model"] == "test-llm"
    assert metadata["input_tokens"] > 20 and metadata["output_tokens"] == len(body["answer"].split(" "))
    assert metadata["time_to_first_token_ms"] > 0 and metadata["timings_ms"]["generate"] > 0


def test_streaming_works_end_to_end_over_sse(faiss_pipeline: Pipeline) -> None:
    namespace = _namespace()
    _ingest_corpus(faiss_pipeline, namespace)
    response = httpx.post(
        f"{faiss_pipeline.search_url}/api/search/stream",
        json={"query": "Why does sourdough rise?", "namespace": namespace},
        headers={"X-API-Key": faiss_pipeline.http().headers["X-API-Key"]},
        timeout=30,
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = list(server_sent_events(response))
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "done" and names.count("token") > 3
    assert events[0][1]["sources"][0]["document_id"] == "bread"
    answer = "".join(data["text"] for name, data in events if name == "token")
    assert answer.startswith("According to [1], Sourdough bread rises")
    assert events[-1][1]["generator"] == "llm" and events[-1][1]["output_tokens"] == names.count("token")


def test_with_the_llm_stopped_the_answer_is_extractive_fast_and_flagged(
    faiss_pipeline: Pipeline, llm_server: LLMServer
) -> None:
    namespace = _namespace()
    _ingest_corpus(faiss_pipeline, namespace)
    llm_server.supervisor.stop(llm_server.component)
    try:
        started = time.monotonic()
        body = _search(faiss_pipeline, namespace, "Who invented the mercury thermometer?", generate=True)
        elapsed = time.monotonic() - started
    finally:
        llm_server.supervisor.start(llm_server.component)
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    assert body["metadata"]["generator"] == "extractive"
    assert "LLM unavailable" in body["metadata"]["generator_reason"]
    assert "Fahrenheit invented the mercury thermometer in 1714. [1]" in body["answer"]


def test_a_cached_answer_is_always_the_one_of_what_answers_now(
    faiss_pipeline: Pipeline, llm_server: LLMServer, tmp_path: Path
) -> None:
    """One question while the search service runs without an LLM, with one (its model learned from the server's
    /v1/models, as when RAGTRACE_LLM_MODEL is unset), and without again, through the real service and Redis: each
    answer comes from what answers at the time, never from the other's cached one; an extractive fallback
    given while the LLM is down is not kept either."""
    namespace = _namespace()
    _ingest_corpus(faiss_pipeline, namespace)
    shared = {k: v for k, v in faiss_pipeline.env.items() if not k.startswith("RAGTRACE_LLM_")}
    ports = dataclasses.replace(ServicePorts.free(), embedding_grpc=faiss_pipeline.services.ports.embedding_grpc)
    without_llm = Services(tmp_path, ports, shared, {"RAGTRACE_LLM_BASE_URL": ""})
    with_llm = Services(
        tmp_path, ports, shared, {"RAGTRACE_LLM_BASE_URL": llm_server.url, "RAGTRACE_LLM_API_KEY": LLM_API_KEY}
    )
    supervisor = Supervisor(tmp_path)

    def ask(question: str) -> dict[str, Any]:
        response = httpx.post(
            f"http://127.0.0.1:{ports.gateway}/api/search",
            json={"query": question, "namespace": namespace, "generate": True},
            headers={"X-API-Key": API_KEY},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def switch_to(services: Services) -> None:
        assert supervisor.start(services.search_service()) is True, "a changed LLM restarts the search service"

    question = "Who invented the mercury thermometer?"
    llm_answer = "According to [1], Daniel Gabriel Fahrenheit invented the mercury thermometer in 1714."
    with supervisor.running([without_llm.search_service(), without_llm.gateway()]):
        extractive, again = ask(question), ask(question)
        assert extractive["metadata"]["generator"] == "extractive" and extractive["answer"] != llm_answer
        assert [extractive["metadata"]["cache_hit"], again["metadata"]["cache_hit"]] == [False, True]

        switch_to(with_llm)
        from_llm, again = ask(question), ask(question)
        assert from_llm["metadata"]["cache_hit"] is False, "the extractive answer is not the LLM's"
        assert from_llm["answer"] == llm_answer
        assert from_llm["metadata"]["generator"] == "llm" and from_llm["metadata"]["model"] == "test-llm"
        assert again["metadata"]["cache_hit"] is True and again["answer"] == llm_answer

        switch_to(without_llm)
        back = ask(question)
        assert back["metadata"]["generator"] == "extractive", "the LLM's answer is not the extractive one"
        assert back["answer"] == extractive["answer"] and back["metadata"]["cache_hit"] is True

        switch_to(with_llm)
        other = "Why does sourdough bread rise?"
        with llm_server.supervisor.stopped(llm_server.component):
            fallback = ask(other)
        assert (
            fallback["metadata"]["generator"] == "extractive"
            and "LLM unavailable" in fallback["metadata"]["generator_reason"]
        )
        recovered = ask(other)
        assert recovered["metadata"]["cache_hit"] is False, "a fallback is not kept as the LLM's answer"
        assert recovered["metadata"]["generator"] == "llm" and recovered["answer"].startswith("According to [1]")


def test_no_match_means_no_llm_call_and_a_clear_answer(faiss_pipeline: Pipeline, llm_server: LLMServer) -> None:
    namespace = _namespace()
    _ingest_corpus(faiss_pipeline, namespace)
    calls = llm_server.completions()
    body = _search(faiss_pipeline, namespace, "qwertyuiopasdf", mode="keyword", generate=True)
    assert body["sources"] == []
    assert body["answer"] == f"No relevant documents were found in namespace '{namespace}'."
    assert body["metadata"]["generator"] == "none"
    assert llm_server.completions() == calls, "no LLM call without sources"


def _foreign_document(document_id: str, text: str, model: str, dimension: int) -> DocumentChunks:
    """A document as another embedding model would have indexed it."""
    chunk = IndexedChunk(f"{document_id}:0", 0, text, 0, len(text), [dimension**-0.5] * dimension)
    return DocumentChunks(document_id, {"title": document_id}, [chunk], model=model)


def test_a_namespace_is_searched_only_with_the_model_that_indexed_it(pipeline: Pipeline) -> None:
    indexed, foreign = _namespace(), _namespace()
    _ingest_corpus(pipeline, indexed, {"one": ("One", "A single document about glaciers.")})
    with pipeline.vector_store() as store:
        minilm = store.embedding_model(indexed)
        assert minilm is not None and minilm.name == BUNDLED_MODEL, "the indexer records the model it was given"
        with pytest.raises(ModelMismatch) as refused:
            store.write(indexed, [_foreign_document("two", "Fjords.", "other-model", minilm.dimension)], [])
        assert BUNDLED_MODEL in str(refused.value) and "other-model" in str(refused.value)
        store.write(foreign, [_foreign_document("ice", "Glaciers carve fjords.", "other-model", minilm.dimension)], [])
        assert store.embedding_model(foreign) == EmbeddingModel("other-model", minilm.dimension)
    assert _search(pipeline, indexed, "glaciers", mode="vector", generate=False)["sources"]
    for mode in ("vector", "hybrid"):
        response = pipeline.search(query="glaciers", namespace=foreign, mode=mode, generate=False)
        assert response.status_code == 409, response.text
        assert "other-model" in response.json()["message"] and BUNDLED_MODEL in response.json()["message"]
    keyword = _search(pipeline, foreign, "glaciers", mode="keyword", generate=False)
    assert [s["document_id"] for s in keyword["sources"]] == ["ice"], "keyword search compares no vectors"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": "   "}, "query"),
        ({"query": "x", "top_k": 0}, "top_k"),
        ({"query": "x", "top_k": 101}, "top_k"),
        ({"query": "x", "mode": "semantic"}, "mode"),
        ({"query": "x", "alpha": 1.5}, "alpha"),
        ({"query": "x", "alpha": -0.1}, "alpha"),
        ({"query": "x" * 2001}, "query"),
        ({"query": "x", "namespace": "Bad NS"}, "namespace"),
    ],
    ids=["blank", "top_k-0", "top_k-101", "unknown-mode", "alpha-high", "alpha-low", "too-long", "bad-namespace"],
)
def test_bad_search_input_gets_a_422_with_the_reason(
    faiss_pipeline: Pipeline, body: dict[str, Any], fragment: str
) -> None:
    response = faiss_pipeline.search(**body)
    assert response.status_code == 422
    assert fragment in response.json()["message"]


def test_malformed_search_json_gets_a_422(faiss_pipeline: Pipeline) -> None:
    response = httpx.post(
        f"{faiss_pipeline.search_url}/api/search",
        content=b'{"query": ',
        headers={"X-API-Key": faiss_pipeline.http().headers["X-API-Key"], "content-type": "application/json"},
    )
    assert response.status_code == 422 and "not valid JSON" in response.json()["message"]


def test_the_search_service_says_invalid_argument_over_grpc(faiss_pipeline: Pipeline) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{faiss_pipeline.services.ports.search_grpc}") as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.Search(search_pb2.SearchRequest(query="x", top_k=500, alpha=2.0), timeout=5)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "top_k" in error.value.details() and "alpha" in error.value.details()


def _health(pipeline: Pipeline, service: str) -> int:
    """The search service's gRPC health status for `service` ("" is the server itself)."""
    with grpc.insecure_channel(f"127.0.0.1:{pipeline.services.ports.search_grpc}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status)


def test_weaviate_down_gives_a_fast_503_naming_it(weaviate_pipeline: Pipeline, infra: Infra) -> None:
    supervisor, weaviate = session_server(infra, "weaviate")
    namespace = _namespace()
    _ingest_corpus(weaviate_pipeline, namespace, {"one": ("One", "A single document about comets.")})
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    with supervisor.stopped(weaviate):
        response, elapsed = timed(
            lambda: weaviate_pipeline.search(query="comets", namespace=namespace, mode="vector", generate=False)
        )
        # Readiness (the named service) follows the dependency; liveness (the server) does not.
        wait_until(lambda: _health(weaviate_pipeline, SEARCH_SERVICE) == not_serving, 15, 0.5, "not ready")
        assert _health(weaviate_pipeline, "") == serving
    assert response.status_code == 503, response.text
    assert response.json()["dependency"] == "weaviate"
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    assert _search(weaviate_pipeline, namespace, "comets", mode="vector", generate=False)["sources"]
    wait_until(lambda: _health(weaviate_pipeline, SEARCH_SERVICE) == serving, 15, 0.5, "ready again")


def test_embedding_service_down_gives_a_fast_503_naming_it(faiss_pipeline: Pipeline) -> None:
    namespace = _namespace()
    _ingest_corpus(faiss_pipeline, namespace, {"one": ("One", "A single document about auroras.")})
    query = "northern lights " + uuid.uuid4().hex  # not in the embedding cache
    with faiss_pipeline.supervisor.stopped(faiss_pipeline.component("embedding-service")):
        response, elapsed = timed(
            lambda: faiss_pipeline.search(query=query, namespace=namespace, mode="vector", generate=False)
        )
        keyword = faiss_pipeline.search(query="auroras", namespace=namespace, mode="keyword", generate=False)
        # The gateway's readiness follows the search service's, which follows its embedding service.
        wait_until(lambda: _gateway_ready(faiss_pipeline) == 503, 15, 0.5, "the gateway not ready")
    assert response.status_code == 503 and response.json()["dependency"] == "embedding-service"
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    assert keyword.status_code == 200, "keyword search needs no embedding"
    wait_until(lambda: _gateway_ready(faiss_pipeline) == 200, 15, 0.5, "the gateway ready again")


def test_a_query_embedded_once_is_searched_again_without_the_embedding_service(
    faiss_pipeline: Pipeline, infra: Infra
) -> None:
    """The query's vector is kept (with the result, in one write after the answer) and read back with the
    namespace's version: asked again in another mode, a result miss, it needs no embedding service."""
    namespace = _namespace()
    _ingest_corpus(faiss_pipeline, namespace, {"one": ("One", "A single document about auroras.")})
    query = "auroras " + uuid.uuid4().hex
    assert _search(faiss_pipeline, namespace, query, mode="vector", generate=False)["sources"]
    cache = redis.Redis.from_url(infra.redis.url.get_secret_value())
    key = SearchCache.embedding_key(BUNDLED_MODEL, query)
    wait_until(lambda: cache.exists(key), 5, 0.05, "the query's embedding kept")
    with faiss_pipeline.supervisor.stopped(faiss_pipeline.component("embedding-service")):
        again = faiss_pipeline.search(query=query, namespace=namespace, mode="hybrid", generate=False)
    assert again.status_code == 200, again.text
    assert again.json()["metadata"]["cache_hit"] is False, "another mode: the result is not the cached one"
    assert [s["document_id"] for s in again.json()["sources"]] == ["one"]


def _gateway_ready(pipeline: Pipeline) -> int:
    return httpx.get(f"{pipeline.search_url}/readyz", timeout=5).status_code


def test_redis_down_search_still_works_uncached(faiss_pipeline: Pipeline, infra: Infra) -> None:
    supervisor, redis = session_server(infra, "redis")
    namespace = _namespace()
    _ingest_corpus(faiss_pipeline, namespace, {"one": ("One", "A single document about geysers.")})
    with supervisor.stopped(redis):
        bodies, elapsed = timed(
            lambda: [_search(faiss_pipeline, namespace, "geysers", generate=False) for _ in range(2)]
        )
    assert all(b["metadata"]["cache_hit"] is False and b["sources"][0]["document_id"] == "one" for b in bodies)
    assert elapsed < 2.0, f"two uncached searches took {elapsed:.2f}s"


def test_after_a_redis_restart_the_first_search_is_cached_again(faiss_pipeline: Pipeline, infra: Infra) -> None:
    """The search service's pooled connections to the old Redis fail once and reconnect: no search is left
    uncached (and no namespace version unread) because of a restart it did not see happen."""
    supervisor, redis = session_server(infra, "redis")
    namespace = _namespace()
    _ingest_corpus(faiss_pipeline, namespace, {"one": ("One", "A single document about fumaroles.")})
    assert _search(faiss_pipeline, namespace, "fumaroles", generate=False)["metadata"]["cache_hit"] is False
    with supervisor.stopped(redis):
        pass  # restarted while no search ran
    after = [_search(faiss_pipeline, namespace, "fumaroles again", generate=False) for _ in range(2)]
    assert [b["metadata"]["cache_hit"] for b in after] == [False, True]
