"""The gateway's dependencies: the search client its lifespan made (query/app.py), handed to the routes.
Tests replace them with `app.dependency_overrides`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from query.gateway import SearchClient
from ragtrace.http import ReadinessCheck


def get_search_client(request: Request) -> SearchClient:
    client: SearchClient = request.app.state.search_client
    return client


SearchClientDep = Annotated[SearchClient, Depends(get_search_client)]


def readiness(client: SearchClientDep) -> dict[str, ReadinessCheck]:
    """What /readyz checks: the search service, whose own readiness covers its index and embedding service."""
    return {"search-service": client.ready}
