"""The HTTP services' dependencies are coroutines: FastAPI runs a plain `def` dependency in its thread pool, a
thread hop (and a GIL hand-over) on every request for what is a lookup on app.state (issue 28: the gateway's
CPU per search)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from ingest import routes as ingest_routes
from ingest.app import create_app as create_ingest_app
from query import routes as gateway_routes
from query.app import create_app as create_gateway_app


def _dependencies(dependant: Dependant) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _dependencies(dependency)


@pytest.mark.parametrize(
    ("create_app", "service_router"),
    [(create_ingest_app, ingest_routes.router), (create_gateway_app, gateway_routes.router)],
    ids=["ingest", "gateway"],
)
def test_no_route_runs_a_dependency_in_the_thread_pool(create_app: Any, service_router: APIRouter) -> None:
    # The service's own routes (the router create_app includes) and the shared ones (/readyz).
    routes = [route for route in (*create_app().routes, *service_router.routes) if isinstance(route, APIRoute)]
    calls = {call for route in routes for call in _dependencies(route.dependant)}

    assert len(calls) >= 3, "the routes have dependencies (the API key, the clients, the readiness checks)"
    assert not [getattr(call, "__qualname__", call) for call in calls if not inspect.iscoroutinefunction(call)]
