"""The search service's work, independent of gRPC: validate, look in the cache, embed the query, retrieve,
generate. query/server.py serves it over gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import asdict
from typing import Any, Protocol

import grpc
import numpy as np
from google.protobuf import struct_pb2
from opentelemetry import trace
from prometheus_client import Histogram

from query.generation import Answer, Generator, Producer
from query.settings import SearchSettings
from ragtrace.cache import SearchCache, normalize_query
from ragtrace.clients import channel_ready, grpc_channel
from ragtrace.errors import DependencyUnavailable
from ragtrace.metrics import LATENCY_BUCKETS, NAMESPACE_EMBEDDING_SECONDS, NAMESPACE_TOKENS, observe
from ragtrace.query_contract import MODES, ResolvedQuery, SearchDefaults
from ragtrace.telemetry import remote_span, trace_id_hex
from ragtrace.v1 import embedding_pb2, embedding_pb2_grpc, search_pb2
from ragtrace.vectorstore import EmbeddingModel, Hit, VectorStore, check_model

tracer = trace.get_tracer("ragtrace.search")

SEARCH_DURATION = Histogram(
    "ragtrace_search_duration_seconds",
    "From request to sources (cache, query embedding, retrieval; generation not included), by mode and cache",
    ["mode", "cache"],
    buckets=LATENCY_BUCKETS,
)


class QueryEmbedder(Protocol):
    model: str
    via: str

    async def embed(self, text: str) -> np.ndarray: ...

    async def check(self) -> None:
        """Raise DependencyUnavailable when embedding cannot work now (readiness)."""
        ...


class GrpcEmbedder:
    """Query embeddings from the EmbeddingService."""

    via = "grpc"

    def __init__(self, target: str, timeout_s: float, model: str) -> None:
        self.channel = grpc_channel(target)
        self.stub = embedding_pb2_grpc.EmbeddingServiceStub(self.channel)
        self.timeout_s = timeout_s
        self.model = model

    async def check(self) -> None:
        await channel_ready(self.channel, "embedding-service")

    async def embed(self, text: str) -> np.ndarray:
        await channel_ready(self.channel, "embedding-service")
        try:
            response = await self.stub.Embed(embedding_pb2.EmbedRequest(text=text), timeout=self.timeout_s)
        except grpc.aio.AioRpcError as error:
            reason = (
                f"no answer within {self.timeout_s:g}s"
                if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                else f"the call failed ({error.code().name})"
            )
            raise DependencyUnavailable("embedding-service", reason) from error
        return np.asarray(response.vector, dtype=np.float32)


class LocalEmbedder:
    """Query embeddings computed in this process."""

    via = "in-process"

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.model = engine.model_name

    async def check(self) -> None:
        """In this process: ready once the model is loaded, as it is by now."""

    async def embed(self, text: str) -> np.ndarray:
        vectors = await asyncio.to_thread(self.engine.embed, [text])
        return np.asarray(vectors[0], dtype=np.float32)


def cache_parameters(query: ResolvedQuery, producer: str) -> dict[str, Any]:
    """What a cached result depends on, besides its namespace's version: `producer` is what answers
    (`Producer.name`: the LLM and its model, or extractive)."""
    return {
        "q": normalize_query(query.query),
        "k": query.top_k,
        "mode": MODES[query.mode],
        "alpha": round(query.alpha, 4),
        "filters": query.filters,
        "generate": query.generate,
        "max_tokens": query.max_tokens,
        "producer": producer if query.generate else "",
    }


NOT_GENERATED = Producer("none")  # generation not requested: the result is sources alone


def _source(hit: Hit) -> search_pb2.Source:
    metadata = struct_pb2.Struct()
    metadata.update({k: v for k, v in hit.metadata.items() if v is not None})
    return search_pb2.Source(
        id=hit.chunk_id,
        document_id=hit.document_id,
        content=hit.content,
        score=hit.score,
        metadata=metadata,
        provenance=search_pb2.Provenance(**asdict(hit.provenance)),
    )


class SearchService:
    def __init__(
        self,
        settings: SearchSettings,
        store: VectorStore,
        embedder: QueryEmbedder,
        cache: SearchCache,
        generator: Generator,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.cache = cache
        self.generator = generator
        self._cache_writes: set[asyncio.Task[None]] = set()
        self.defaults = SearchDefaults(
            top_k=settings.default_top_k,
            mode=settings.default_mode,
            alpha=settings.default_alpha,
            max_tokens=generator.settings.default_max_tokens,
        )

    async def search(self, request: search_pb2.SearchRequest) -> search_pb2.SearchResponse:
        response: search_pb2.SearchResponse | None = None
        async for event in self.stream(request):
            if event.HasField("sources"):
                response = event.sources
            elif event.HasField("token") and response is not None:
                response.answer += event.token
            elif event.HasField("done") and response is not None:
                response.metadata.CopyFrom(event.done)
        if response is None:  # stream() always starts with the sources; this guards against a change there
            raise RuntimeError("the search produced no sources event")
        return response

    async def stream(self, request: search_pb2.SearchRequest) -> AsyncIterator[search_pb2.SearchEvent]:
        """Sources first, then answer tokens, then the final metadata."""
        started = time.perf_counter()
        query = ResolvedQuery.from_proto(request, self.defaults)
        producer = await self.generator.producer() if query.generate else NOT_GENERATED
        # The LLM unavailable (no producer name): its answer is unknown, no result is looked up or kept.
        parameters = cache_parameters(query, producer.name) if producer.name else None
        embedding_key = None if query.mode == "keyword" else self.cache.embedding_key(self.embedder.model, query.query)
        with tracer.start_as_current_span("cache lookup", attributes={"ragtrace.namespace": query.namespace}) as span:
            found = await self.cache.lookup(query.namespace, parameters, embedding_key)
            span.set_attribute("ragtrace.cache.hit", found.result is not None)
        if found.result is not None:
            response = search_pb2.SearchResponse.FromString(found.result)
            response.metadata.cache_hit = True
            response.metadata.trace_id = trace_id_hex()
            response.metadata.timings_ms.total = (time.perf_counter() - started) * 1000
            cached_answer = response.answer
            response.answer = ""
            observe(SEARCH_DURATION.labels(query.mode, "hit"), time.perf_counter() - started)
            yield search_pb2.SearchEvent(sources=response)
            if cached_answer:
                yield search_pb2.SearchEvent(token=cached_answer)
            yield search_pb2.SearchEvent(done=response.metadata)
            return

        metadata = search_pb2.SearchMetadata(
            trace_id=trace_id_hex(),
            mode=MODES[query.mode],
            top_k=query.top_k,
            namespace=query.namespace,
            alpha=query.alpha,
        )
        hits, embedded = await self._retrieve(query, metadata, found.embedding)
        metadata.num_sources = len(hits)
        sources = [_source(hit) for hit in hits]
        observe(SEARCH_DURATION.labels(query.mode, "miss"), time.perf_counter() - started)
        yield search_pb2.SearchEvent(sources=search_pb2.SearchResponse(sources=sources, metadata=metadata))

        answer = Answer()
        if query.generate:
            tokens = self.generator.answer(query.query, query.namespace, hits, query.max_tokens, producer, answer)
            async for token in tokens:
                yield search_pb2.SearchEvent(token=token)
        metadata.generator = answer.generator if query.generate else "none"
        metadata.generator_reason = answer.reason if query.generate else "generation not requested"
        metadata.model = answer.model
        metadata.input_tokens = answer.input_tokens
        metadata.output_tokens = answer.output_tokens
        metadata.time_to_first_token_ms = answer.time_to_first_token_ms
        NAMESPACE_TOKENS.labels(query.namespace, "prompt").inc(answer.input_tokens)
        NAMESPACE_TOKENS.labels(query.namespace, "completion").inc(answer.output_tokens)
        metadata.timings_ms.generate = answer.generate_ms
        metadata.timings_ms.total = (time.perf_counter() - started) * 1000
        yield search_pb2.SearchEvent(done=metadata)
        result = None
        if found.key is not None and not answer.fallback:
            # Kept under its producer's key; a fallback is not that producer's answer (the LLM may be back next time).
            result = search_pb2.SearchResponse(
                answer=answer.text, sources=sources, metadata=metadata
            ).SerializeToString()
        new_embedding = None if embedded is None or embedding_key is None else (embedding_key, embedded)
        self._write_behind(self.cache.put(found.key, result, new_embedding))

    def _write_behind(self, write: Coroutine[Any, Any, None]) -> None:
        """A cache write off the request's path: the answer does not wait for Redis to store it (a failed write
        is logged by the cache and costs only a later miss)."""
        task = asyncio.create_task(write)
        self._cache_writes.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._cache_writes.discard)

    async def _embed(
        self, text: str, namespace: str, metadata: search_pb2.SearchMetadata, cached: np.ndarray | None
    ) -> np.ndarray:
        started = time.perf_counter()
        with tracer.start_as_current_span(
            f"embed query ({self.embedder.via})",
            attributes={"ragtrace.embedding.model": self.embedder.model, "ragtrace.embedding.via": self.embedder.via},
        ) as span:
            span.set_attribute("ragtrace.cache.hit", cached is not None)
            vector = cached
            if vector is None:
                embedding_started = time.perf_counter()
                vector = await self.embedder.embed(text)
                NAMESPACE_EMBEDDING_SECONDS.labels(namespace, "query").inc(time.perf_counter() - embedding_started)
        metadata.timings_ms.embed = (time.perf_counter() - started) * 1000
        return vector

    def _checked_search(self, query: ResolvedQuery, vector: np.ndarray | None, wanted: int) -> list[Hit]:
        """The store's search for the query's mode, in one call from the event loop's thread pool (a hop costs
        about as much CPU as the model check it would take alone). A query vector must come from the model that
        indexed the namespace: ModelMismatch if not."""
        if vector is None:
            return self.store.keyword_search(query.namespace, query.query, wanted)
        indexed = self.store.embedding_model(query.namespace)
        check_model(query.namespace, indexed, EmbeddingModel(self.embedder.model, len(vector)))
        if query.mode == "vector":
            return self.store.search(query.namespace, vector.tolist(), wanted)
        return self.store.hybrid_search(query.namespace, query.query, vector.tolist(), wanted, query.alpha)

    async def _retrieve(
        self, query: ResolvedQuery, metadata: search_pb2.SearchMetadata, cached: np.ndarray | None
    ) -> tuple[list[Hit], np.ndarray | None]:
        """The hits, and the query's vector when it was computed here (not `cached`), for the cache to keep."""
        mode = query.mode
        vector = None if mode == "keyword" else await self._embed(query.query, query.namespace, metadata, cached)
        wanted = self.settings.filter_candidates if query.filters else query.top_k
        started = time.perf_counter()
        with tracer.start_as_current_span(
            f"retrieve {mode}",
            attributes={
                "gen_ai.operation.name": "retrieval",
                "gen_ai.request.top_k": query.top_k,
                "ragtrace.search.mode": mode,
                "ragtrace.namespace": query.namespace,
                "db.system.name": self.store.backend.value,
            },
        ) as span:
            hits = await asyncio.to_thread(self._checked_search, query, vector, wanted)
            hits = _filtered(hits, query.filters)[: query.top_k]
            _score_attributes(span, hits)
            _link_ingestions(span, hits)
        metadata.timings_ms.search = (time.perf_counter() - started) * 1000
        return hits, None if cached is not None else vector


def _filtered(hits: Sequence[Hit], filters: dict[str, str]) -> list[Hit]:
    return [h for h in hits if all(str(h.metadata.get(k)) == v for k, v in filters.items())]


def _link_ingestions(span: trace.Span, hits: Sequence[Hit]) -> None:
    """Link the retrieval to the ingestion of each document it returned: from "why this answer?" to the
    request that brought the source in (a document indexed before provenance was kept has no link)."""
    linked: set[tuple[str, str]] = set()
    for hit in hits:
        ingestion = (hit.provenance.trace_id, hit.provenance.span_id)
        context = remote_span(*ingestion)
        if context is not None and ingestion not in linked:
            linked.add(ingestion)
            span.add_link(context, {"document.id": hit.document_id, "ragtrace.link.type": "ingestion"})


def _score_attributes(span: trace.Span, hits: Sequence[Hit]) -> None:
    span.set_attribute("ragtrace.search.results", len(hits))
    if hits:
        scores = [h.score for h in hits]
        span.set_attributes(
            {
                "ragtrace.search.score.min": min(scores),
                "ragtrace.search.score.max": max(scores),
                "ragtrace.search.score.avg": sum(scores) / len(scores),
            }
        )
