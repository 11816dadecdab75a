"""Ingest API: accepts documents, stores them in MinIO, announces them on Kafka.

Run: `python -m ingest.app` (127.0.0.1:8082 by default). The app is assembled here: its lifespan makes the
state (the document store, the Kafka publisher, the `Ingestion` use cases over them; ingest/ingestion.py),
ingest/deps.py hands it to the routes (ingest/routes.py), ragtrace/http.py adds what every service shares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from ingest import bodies, deps, routes
from ingest.ingestion import Ingestion
from ingest.settings import IngestSettings
from ragtrace.http import create_service_app
from ragtrace.messaging import documents_publisher
from ragtrace.runtime import document_store, run_http_service
from ragtrace.settings import KafkaSettings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    kafka = KafkaSettings()
    publisher = documents_publisher(kafka)
    app.state.ingestion = Ingestion(document_store(), publisher, kafka)
    publisher.start_warm_up()
    try:
        yield
    finally:
        await publisher.close()


def create_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    app = create_service_app(
        "ragtrace ingest",
        settings.max_body_bytes,
        readiness=deps.readiness,
        routers=[routes.router],
        lifespan=lifespan,
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
