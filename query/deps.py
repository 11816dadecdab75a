"""The gateway's dependencies: the clients its lifespan made (query/app.py) and Tempo's settings, handed to
the routes. Tests replace them with `app.dependency_overrides`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from query.gateway import SearchClient
from ragtrace.http import ReadinessCheck
from ragtrace.ingest_client import AsyncIngestClient
from ragtrace.settings import TraceQuerySettings


async def get_search_client(request: Request) -> SearchClient:
    client: SearchClient = request.app.state.search_client
    return client


SearchClientDep = Annotated[SearchClient, Depends(get_search_client)]


async def get_ingest_client(request: Request) -> AsyncIngestClient:
    client: AsyncIngestClient = request.app.state.ingest_client
    return client


IngestClientDep = Annotated[AsyncIngestClient, Depends(get_ingest_client)]


async def get_trace_query(request: Request) -> TraceQuerySettings:
    settings: TraceQuerySettings = request.app.state.trace_query
    return settings


TraceQueryDep = Annotated[TraceQuerySettings, Depends(get_trace_query)]


async def readiness(client: SearchClientDep) -> dict[str, ReadinessCheck]:
    """What /readyz checks: the search service, whose own readiness covers its index and embedding service."""
    return {"search-service": client.ready}
