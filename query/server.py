"""SearchService over gRPC (with the health checking protocol).

Errors keep their meaning: INVALID_ARGUMENT (bad request, see ragtrace/query_contract.py), NOT_FOUND (unknown
namespace), FAILED_PRECONDITION (the query's embedding model is not the one that indexed the namespace; both
named), UNAVAILABLE with the dependency named in the trailing metadata key `dependency`, DEADLINE_EXCEEDED.

Run: `python -m query.server` (127.0.0.1:50061 by default).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from query.generation import Generator
from query.search import GrpcEmbedder, LocalEmbedder, QueryEmbedder, SearchService
from query.settings import SEARCH_SERVICE_HEALTH, LLMSettings, SearchSettings
from ragtrace.cache import SearchCache
from ragtrace.clients import redis_client
from ragtrace.errors import DependencyUnavailable, InvalidInput, ModelMismatch
from ragtrace.runtime import run_async_service, start_grpc_server
from ragtrace.settings import RedisSettings, WeaviateSettings
from ragtrace.v1 import search_pb2, search_pb2_grpc
from ragtrace.vectorstore import UnknownNamespace, VectorStoreSettings, open_vector_store

log = logging.getLogger(__name__)
T = TypeVar("T")


# The errors a search answers with a status of their own (`_abort`); any other is INTERNAL.
SEARCH_ERRORS = (InvalidInput, ModelMismatch, UnknownNamespace, DependencyUnavailable, TimeoutError)


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> NoReturn:
    if isinstance(error, InvalidInput):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    if isinstance(error, ModelMismatch):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    if isinstance(error, UnknownNamespace):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"namespace '{error.args[0]}' has no documents")
    if isinstance(error, DependencyUnavailable):
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, str(error), trailing_metadata=(("dependency", error.dependency),)
        )
    if isinstance(error, TimeoutError):
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the search took too long")
    raise error


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, service: SearchService) -> None:
        self.service = service

    async def Search(
        self, request: search_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.SearchResponse:
        return await self._guarded(context, lambda: self.service.search(request))

    async def SearchStream(
        self, request: search_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[search_pb2.SearchEvent]:
        try:
            async for event in self.service.stream(request):
                yield event
        except SEARCH_ERRORS as error:
            await _abort(context, error)

    async def _guarded(self, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except SEARCH_ERRORS as error:
            await _abort(context, error)


def _embedder(settings: SearchSettings) -> QueryEmbedder:
    from embedding.settings import EmbeddingSettings

    embedding = EmbeddingSettings()
    if settings.embedding_target:
        return GrpcEmbedder(settings.embedding_target, settings.embedding_timeout_s, embedding.model)
    from embedding.engine import EmbeddingEngine

    return LocalEmbedder(EmbeddingEngine(embedding, serves_queries=True))


async def serve(settings: SearchSettings) -> None:
    store = open_vector_store(VectorStoreSettings(), WeaviateSettings())
    cache = SearchCache(
        redis_client(RedisSettings(), timeout_s=0.25), settings.cache_ttl_s, settings.embedding_cache_ttl_s
    )
    generator = Generator(LLMSettings())
    service = SearchService(settings, store, _embedder(settings), cache, generator)
    address = f"{settings.host}:{settings.port}"
    server = await start_grpc_server(
        SEARCH_SERVICE_HEALTH,
        address,
        settings.metrics_port,
        lambda s: search_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(service), s),
        readiness={"index": lambda: asyncio.to_thread(store.check), "embedding": service.embedder.check},
    )
    log.info(
        "SearchService on %s (%s backend, LLM %s)",
        address,
        store.backend.value,
        generator.settings.base_url or "none: extractive answers",
    )
    try:
        await server.wait_for_termination()
    finally:
        await generator.close()
        await asyncio.to_thread(store.close)


def main() -> None:
    run_async_service("search-service", lambda: serve(SearchSettings()), grpc_aio=True)


if __name__ == "__main__":
    main()
