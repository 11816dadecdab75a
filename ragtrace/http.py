"""What every ragtrace HTTP service shares: JSON errors a person can act on (domain errors mapped to their
HTTP status here, once), a body-size limit enforced while reading, /healthz, /readyz and /metrics, and
OpenTelemetry instrumentation. Each service adds its routers (module-level APIRouters) and its lifespan,
which puts the service's state on `app.state` for its dependencies (`<service>/deps.py`) to hand out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragtrace.auth import AuthSettings
from ragtrace.errors import (
    AlreadyRunning,
    ConcurrentUpdate,
    DependencyUnavailable,
    DocumentNotFound,
    NamespaceNotFound,
    error_location,
    field_errors,
)
from ragtrace.metrics import OPERATIONS_PATHS, HttpMetrics
from ragtrace.schemas import ErrorBody

ReadinessCheck = Callable[[], Awaitable[None]]
# A FastAPI dependency naming the service's readiness checks: dependency name → check. A coroutine, as every
# dependency is (tests/unit/test_http_dependencies.py): a plain function would cost a thread-pool hop per request.
Readiness = Callable[..., Awaitable[Mapping[str, ReadinessCheck]]]


def error_response(
    code: int, error: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = ErrorBody(error=error, message=message, **extra).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=code, headers=dict(headers or {}))


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    errors = cast(RequestValidationError, exc).errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        message = "the body is not valid JSON: " + "; ".join(str(e.get("ctx", {}).get("error", "")) for e in errors)
    else:
        message = field_errors(errors)
    details = [{"location": error_location(e["loc"]), "message": e["msg"], "type": e["type"]} for e in errors]
    return error_response(422, "invalid_request", message, details=details)


async def _dependency_down(_: Request, exc: Exception) -> JSONResponse:
    dependency = cast(DependencyUnavailable, exc).dependency
    return error_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "dependency_unavailable",
        str(exc),
        headers={"Retry-After": "1"},
        dependency=dependency,
    )


async def _concurrent_update(_: Request, exc: Exception) -> JSONResponse:
    return error_response(status.HTTP_409_CONFLICT, "conflict", str(exc), headers={"Retry-After": "1"})


async def _already_running(_: Request, exc: Exception) -> JSONResponse:
    return error_response(status.HTTP_409_CONFLICT, "conflict", str(exc))


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return error_response(status.HTTP_404_NOT_FOUND, "not_found", str(exc))


_ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
    422: "invalid_request",
    504: "timeout",
}


# FastAPI's answer to a body it cannot decode at all (invalid UTF-8, JSON nested beyond Python's recursion).
_UNPARSEABLE_BODY = "There was an error parsing the body"


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    error = cast(StarletteHTTPException, exc)
    if error.status_code == status.HTTP_400_BAD_REQUEST and error.detail == _UNPARSEABLE_BODY:
        return error_response(422, "invalid_request", "the body is not valid JSON: it could not be decoded or parsed")
    return error_response(
        error.status_code, _ERROR_NAMES.get(error.status_code, "error"), str(error.detail), headers=error.headers
    )


class BodySizeLimit:
    """Refuses bodies over `max_bytes` with 413: at once from Content-Length, else while the body streams in
    (a client cannot get around the limit by leaving Content-Length out)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(413, "payload_too_large", self._message())(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is larger than the limit of {self.max_bytes} bytes"


class HeaderSizeLimit:
    """Refuses requests whose headers add up to more than `max_bytes` with 431: the HTTP server parses them
    without a limit of its own."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_bytes:
            message = f"the request headers are larger than the limit of {self.max_bytes} bytes"
            await error_response(431, "headers_too_large", message)(scope, receive, send)
            return
        await self.app(scope, receive, send)


MAX_HEADER_BYTES = 16 * 1024  # what common proxies allow; an API key and trace context need a few hundred

# The errors every service can answer with, in ErrorBody's shape, for the OpenAPI description.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": description}
    for code, description in {
        401: "No or an unknown API key",
        403: "The API key may not use this namespace",
        404: "No such document or namespace",
        409: "A concurrent update of the same record (retry after Retry-After), a search embedded with a model"
        " other than the namespace's (both named), or a re-index of a namespace that is running already",
        413: "The body is over the size limit",
        415: "The file type is not supported",
        422: "The request is invalid: the message names each field and problem",
        431: "The headers are over the size limit",
        503: "A dependency is unavailable: `dependency` names it",
    }.items()
}


def create_service_app(
    title: str,
    max_body_bytes: int,
    readiness: Readiness | Mapping[str, ReadinessCheck],
    routers: Sequence[APIRouter] = (),
    **fastapi_args: Any,
) -> FastAPI:
    """A FastAPI app with ragtrace's error format, body limit, /healthz, /readyz, /metrics and tracing, and
    the service's routers. `readiness` is best a dependency, so that it reaches the state the lifespan made."""
    if isinstance(readiness, Mapping):
        fixed = readiness

        async def fixed_readiness() -> Mapping[str, ReadinessCheck]:
            return fixed

        readiness = fixed_readiness
    app = FastAPI(title=title, responses=ERROR_RESPONSES, **fastapi_args)
    app.state.auth = AuthSettings()
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(DependencyUnavailable, _dependency_down)
    app.add_exception_handler(ConcurrentUpdate, _concurrent_update)
    app.add_exception_handler(DocumentNotFound, _not_found)
    app.add_exception_handler(NamespaceNotFound, _not_found)
    app.add_exception_handler(AlreadyRunning, _already_running)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # FastAPI's own HTTPException is one too
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(HeaderSizeLimit, max_bytes=MAX_HEADER_BYTES)
    app.add_middleware(HttpMetrics)  # outside the body limit, so a 413 is counted too

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is alive (dependencies are not checked: see /readyz)."""
        return {"status": "ok"}

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus text format, or OpenMetrics", "content": {"text/plain": {}}}},
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics; OpenMetrics (with exemplars) when the Accept header asks for it."""
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(REGISTRY), media_type=content_type)

    @app.get("/readyz", tags=["operations"])
    # A default rather than Annotated: the dependency is local, and annotations here are strings.
    async def readyz(checks: Mapping[str, ReadinessCheck] = Depends(readiness)) -> JSONResponse:
        """Every dependency answers."""
        outcomes = await asyncio.gather(*(check() for check in checks.values()), return_exceptions=True)
        down = {name: str(outcome) for name, outcome in zip(checks, outcomes, strict=True) if outcome is not None}
        if down:
            return error_response(503, "not_ready", "unavailable: " + ", ".join(sorted(down)), details=[down])
        return JSONResponse({"status": "ready", "dependencies": sorted(checks)})

    for router in routers:
        app.include_router(router)

    # No spans for the ASGI receive/send events: one per body chunk (an SSE answer: one per token) that say
    # nothing the request's own span does not, at a cost on every request.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls=",".join(p.lstrip("/") for p in OPERATIONS_PATHS), exclude_spans=["receive", "send"]
    )
    return app
