"""The search service's work, independent of gRPC: validate, look in the cache, embed the query, retrieve,
generate. query/server.py serves it over gRPC."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np
from google.protobuf import struct_pb2
from opentelemetry import trace
from prometheus_client import Histogram

from query.generation import Answer, Generator
from query.settings import MODE_NAMES, MODES, SearchSettings
from ragtrace.cache import SearchCache, normalize_query
from ragtrace.clients import channel_ready, grpc_channel
from ragtrace.errors import DependencyUnavailable
from ragtrace.metrics import LATENCY_BUCKETS, observe
from ragtrace.schemas import NAMESPACE_PATTERN
from ragtrace.telemetry import trace_id_hex
from ragtrace.v1 import embedding_pb2, embedding_pb2_grpc, search_pb2
from ragtrace.vectorstore import Hit, VectorStore

tracer = trace.get_tracer("ragtrace.search")

SEARCH_DURATION = Histogram(
    "ragtrace_search_duration_seconds",
    "From request to sources (cache, query embedding, retrieval; generation not included), by mode and cache",
    ["mode", "cache"],
    buckets=LATENCY_BUCKETS,
)

MAX_TOP_K = 100
MAX_GENERATED_TOKENS = 4096


class InvalidSearch(ValueError):
    """The request cannot be served as given: gRPC INVALID_ARGUMENT, HTTP 422."""


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


@dataclass
class Query:
    """A validated request, with the service's defaults filled in."""

    text: str
    namespace: str
    top_k: int
    mode: search_pb2.SearchMode
    alpha: float
    filters: dict[str, str]
    generate: bool
    max_tokens: int

    def cache_parameters(self, generator_model: str) -> dict[str, Any]:
        return {
            "q": normalize_query(self.text),
            "k": self.top_k,
            "mode": self.mode,
            "alpha": round(self.alpha, 4),
            "filters": self.filters,
            "generate": self.generate,
            "max_tokens": self.max_tokens,
            "llm": generator_model if self.generate else "",
        }


def validate(request: search_pb2.SearchRequest, settings: SearchSettings, default_max_tokens: int) -> Query:
    problems = []
    text = request.query.strip()
    if not text:
        problems.append("query: must not be empty")
    elif len(text) > settings.max_query_chars:
        problems.append(f"query: at most {settings.max_query_chars} characters (got {len(text)})")
    namespace = request.namespace or "default"
    if not re.match(NAMESPACE_PATTERN, namespace):
        problems.append(f"namespace: '{namespace}' does not match {NAMESPACE_PATTERN}")
    top_k = request.top_k or settings.default_top_k
    if not 1 <= top_k <= MAX_TOP_K:
        problems.append(f"top_k: must be between 1 and {MAX_TOP_K} (got {top_k})")
    mode = request.mode or MODES[settings.default_mode]
    if mode not in MODE_NAMES:
        problems.append(f"mode: unknown mode {request.mode}")
    alpha = request.alpha if request.HasField("alpha") else settings.default_alpha
    if not 0.0 <= alpha <= 1.0:
        problems.append(f"alpha: must be between 0 and 1 (got {alpha})")
    max_tokens = request.max_tokens or default_max_tokens
    if not 1 <= max_tokens <= MAX_GENERATED_TOKENS:
        problems.append(f"max_tokens: must be between 1 and {MAX_GENERATED_TOKENS}")
    if any(not key for key in request.filters):
        problems.append("filters: keys must not be empty")
    if problems:
        raise InvalidSearch("; ".join(problems))
    return Query(text, namespace, top_k, mode, alpha, dict(request.filters), request.generate, max_tokens)


def _source(hit: Hit) -> search_pb2.Source:
    metadata = struct_pb2.Struct()
    metadata.update({k: v for k, v in hit.metadata.items() if v is not None})
    return search_pb2.Source(
        id=hit.chunk_id, document_id=hit.document_id, content=hit.content, score=hit.score, metadata=metadata
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
        query = validate(request, self.settings, self.generator.settings.default_max_tokens)
        key = await self._cache_key(query)
        with tracer.start_as_current_span("cache lookup", attributes={"ragtrace.namespace": query.namespace}) as span:
            cached = await self.cache.get(key)
            span.set_attribute("ragtrace.cache.hit", cached is not None)
        if cached is not None:
            response = search_pb2.SearchResponse.FromString(cached)
            response.metadata.cache_hit = True
            response.metadata.trace_id = trace_id_hex()
            response.metadata.timings_ms.total = (time.perf_counter() - started) * 1000
            cached_answer = response.answer
            response.answer = ""
            observe(SEARCH_DURATION.labels(MODE_NAMES[query.mode], "hit"), time.perf_counter() - started)
            yield search_pb2.SearchEvent(sources=response)
            if cached_answer:
                yield search_pb2.SearchEvent(token=cached_answer)
            yield search_pb2.SearchEvent(done=response.metadata)
            return

        metadata = search_pb2.SearchMetadata(
            trace_id=trace_id_hex(), mode=query.mode, top_k=query.top_k, namespace=query.namespace, alpha=query.alpha
        )
        hits = await self._retrieve(query, metadata)
        metadata.num_sources = len(hits)
        sources = [_source(hit) for hit in hits]
        observe(SEARCH_DURATION.labels(MODE_NAMES[query.mode], "miss"), time.perf_counter() - started)
        yield search_pb2.SearchEvent(sources=search_pb2.SearchResponse(sources=sources, metadata=metadata))

        answer = Answer()
        if query.generate:
            async for token in self.generator.answer(query.text, query.namespace, hits, query.max_tokens, answer):
                yield search_pb2.SearchEvent(token=token)
        metadata.generator = answer.generator if query.generate else "none"
        metadata.generator_reason = answer.reason if query.generate else "generation not requested"
        metadata.model = answer.model
        metadata.input_tokens = answer.input_tokens
        metadata.output_tokens = answer.output_tokens
        metadata.time_to_first_token_ms = answer.time_to_first_token_ms
        metadata.timings_ms.generate = answer.generate_ms
        metadata.timings_ms.total = (time.perf_counter() - started) * 1000
        yield search_pb2.SearchEvent(done=metadata)
        if metadata.generator != "extractive" or not self.generator.configured:
            # An extractive answer given because the LLM failed is not kept: the LLM may be back next time.
            final = search_pb2.SearchResponse(answer=answer.text, sources=sources, metadata=metadata)
            await self.cache.put(key, final.SerializeToString())

    async def _cache_key(self, query: Query) -> str | None:
        return await self.cache.result_key(query.namespace, query.cache_parameters(self.generator.settings.model))

    async def _embed(self, text: str, metadata: search_pb2.SearchMetadata) -> np.ndarray:
        started = time.perf_counter()
        with tracer.start_as_current_span(
            f"embed query ({self.embedder.via})",
            attributes={"ragtrace.embedding.model": self.embedder.model, "ragtrace.embedding.via": self.embedder.via},
        ) as span:
            vector = await self.cache.get_embedding(self.embedder.model, text)
            span.set_attribute("ragtrace.cache.hit", vector is not None)
            if vector is None:
                vector = await self.embedder.embed(text)
                await self.cache.put_embedding(self.embedder.model, text, vector)
        metadata.timings_ms.embed = (time.perf_counter() - started) * 1000
        return vector

    async def _retrieve(self, query: Query, metadata: search_pb2.SearchMetadata) -> list[Hit]:
        mode = MODE_NAMES[query.mode]
        vector = None if mode == "keyword" else await self._embed(query.text, metadata)
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
            if vector is None:
                hits = await asyncio.to_thread(self.store.keyword_search, query.namespace, query.text, wanted)
            elif mode == "vector":
                hits = await asyncio.to_thread(self.store.search, query.namespace, vector.tolist(), wanted)
            else:
                hits = await asyncio.to_thread(
                    self.store.hybrid_search, query.namespace, query.text, vector.tolist(), wanted, query.alpha
                )
            hits = _filtered(hits, query.filters)[: query.top_k]
            _score_attributes(span, hits)
        metadata.timings_ms.search = (time.perf_counter() - started) * 1000
        return hits


def _filtered(hits: Sequence[Hit], filters: dict[str, str]) -> list[Hit]:
    return [h for h in hits if all(str(h.metadata.get(k)) == v for k, v in filters.items())]


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
