"""The HTTP gateway of the query path: JSON and server-sent events over the gRPC SearchService, and a page.

Run: `python -m query.app` (127.0.0.1:8080 by default). The app is assembled here: its lifespan opens the
search client (query/gateway.py), query/deps.py hands it to the routes (query/routes.py, where the endpoints
and the gRPC → HTTP status mapping are), ragtrace/http.py adds what every service shares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from query import deps, routes
from query.gateway import SearchClient
from query.settings import GatewaySettings
from ragtrace.http import create_service_app
from ragtrace.ingest_client import AsyncIngestClient
from ragtrace.runtime import run_http_service
from ragtrace.settings import TraceQuerySettings


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.search_client = client = SearchClient(settings.search_target, settings.search_timeout_s)
        app.state.ingest_client = ingest = AsyncIngestClient(settings.ingest_url, timeout=settings.ingest_timeout_s)
        app.state.trace_query = TraceQuerySettings()
        try:
            yield
        finally:
            await client.close()
            await ingest.aclose()

    return create_service_app(
        "ragtrace search gateway",
        settings.max_body_bytes,
        readiness=deps.readiness,
        routers=[routes.router],
        lifespan=lifespan,
    )


def main() -> None:
    settings = GatewaySettings()
    run_http_service("search-gateway", lambda: create_app(settings), settings.host, settings.port, grpc_aio=True)


if __name__ == "__main__":
    main()
