"""Ingest API: accepts documents, stores them in MinIO, announces them on Kafka.

Run: `python -m ingest.app` (127.0.0.1:8082 by default). The app is assembled here: its lifespan makes the
state (the document store, the Kafka publisher, the `Ingestion` use cases over them, ingest/ingestion.py; the
`Reindexing` of namespaces, ingest/reindex.py, with its loop),
ingest/deps.py hands it to the routes (ingest/routes.py), ragtrace/http.py adds what every service shares.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from ingest import bodies, deps, routes
from ingest.ingestion import Ingestion
from ingest.reindex import Reindexing
from ingest.settings import IngestSettings
from ragtrace.clients import redis_client
from ragtrace.http import create_service_app
from ragtrace.messaging import documents_publisher
from ragtrace.runtime import document_store, run_http_service
from ragtrace.settings import KafkaSettings, RedisSettings, WeaviateSettings
from ragtrace.vectorstore import VectorStoreSettings, open_vector_store


def lifespan(settings: IngestSettings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def state(app: FastAPI) -> AsyncIterator[None]:
        kafka = KafkaSettings()
        publisher = documents_publisher(kafka)
        store = document_store()
        app.state.ingestion = Ingestion(store, publisher, kafka)
        index = open_vector_store(VectorStoreSettings(), WeaviateSettings())
        cache = redis_client(RedisSettings())
        app.state.reindexing = Reindexing(store, index, publisher, kafka, cache, settings)
        publisher.start_warm_up()
        jobs = asyncio.create_task(app.state.reindexing.run(), name="reindex jobs")
        try:
            yield
        finally:
            jobs.cancel()
            await asyncio.gather(jobs, return_exceptions=True)
            await app.state.reindexing.close()
            await publisher.close()
            await asyncio.to_thread(index.close)
            await cache.aclose()  # type: ignore[attr-defined]  # redis-py 5+ has it; types-redis lags

    return state


def create_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    app = create_service_app(
        "ragtrace ingest",
        settings.max_body_bytes,
        readiness=deps.readiness,
        routers=[routes.router],
        lifespan=lifespan(settings),
    )
    generated = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's description, with the schemas of the bodies the routes read themselves (ingest/bodies.py)."""
        schema = generated()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(bodies.openapi_schemas())
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def main() -> None:
    settings = IngestSettings()
    run_http_service("ingest-api", lambda: create_app(settings), settings.host, settings.port)


if __name__ == "__main__":
    main()
