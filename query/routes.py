"""The gateway's routes: JSON and server-sent events over the gRPC SearchService, and a page.

    POST /api/search          SearchQuery in, SearchResult out (ragtrace/query_contract.py)
    POST /api/search/stream   the same, answered as server-sent events: sources, token..., done
    GET  /api/traces/{id}     a trace as a waterfall, read from Tempo (the page shows each answer's)
    GET  /api/documents/{id}  a document's status, from the ingest API (its trace_id: its ingestion's trace)
    GET  /                    a small search page

gRPC status → HTTP, here once: INVALID_ARGUMENT 422, NOT_FOUND 404, FAILED_PRECONDITION 409 (the query's
embedding model is not the namespace's, both named), UNAVAILABLE 503 (naming the dependency),
DEADLINE_EXCEEDED 504, anything else 502.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import grpc
import httpx
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi import Path as PathParameter
from fastapi.responses import FileResponse, JSONResponse
from sse_starlette import EventSourceResponse

from query.deps import IngestClientDep, SearchClientDep, TraceQueryDep
from query.waterfall import Waterfall, namespaces, waterfall
from ragtrace.auth import Authenticated
from ragtrace.errors import DependencyUnavailable
from ragtrace.query_contract import SearchMetadata, SearchQuery, SearchResult
from ragtrace.schemas import DocumentId, DocumentStatus, Namespace
from ragtrace.tempo import fetch_trace

TraceId = Annotated[str, PathParameter(pattern=r"^[0-9a-f]{32}$", description="32 lowercase hex digits")]

STATIC = Path(__file__).parent / "static"

router = APIRouter()

_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: status.HTTP_422_UNPROCESSABLE_CONTENT,
    grpc.StatusCode.NOT_FOUND: status.HTTP_404_NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: status.HTTP_409_CONFLICT,
}


def http_error(error: grpc.aio.AioRpcError) -> Exception:
    """The HTTP answer to a failed search call."""
    code, details = error.code(), error.details() or ""
    if code in _STATUS:
        return HTTPException(_STATUS[code], details)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, f"the search took too long: {details}")
    if code is grpc.StatusCode.UNAVAILABLE:
        dependency = dict(error.trailing_metadata() or ()).get("dependency")
        return DependencyUnavailable(str(dependency or "search-service"), details)
    return HTTPException(status.HTTP_502_BAD_GATEWAY, f"the search service failed: {code.name}: {details}")


def _event(name: str, data: Any) -> dict[str, str]:
    return {"event": name, "data": json.dumps(data)}


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.post("/api/search", tags=["search"], response_model=SearchResult)
async def search(body: SearchQuery, principal: Authenticated, client: SearchClientDep) -> SearchResult:
    """Sources for the query and, with `generate`, an answer citing them."""
    principal.authorize(body.namespace)
    try:
        response = await client.search(body.to_proto())
    except grpc.aio.AioRpcError as error:
        raise http_error(error) from error
    return SearchResult.from_proto(response)


@router.post(
    "/api/search/stream",
    tags=["search"],
    response_class=EventSourceResponse,
    responses={
        200: {"description": "Server-sent events: sources, token..., done", "content": {"text/event-stream": {}}}
    },
)
async def search_stream(body: SearchQuery, principal: Authenticated, client: SearchClientDep) -> EventSourceResponse:
    """The same search as server-sent events: `sources` (SearchResult's sources and metadata), then `token`
    events (`text`), then `done` (the final SearchMetadata)."""
    principal.authorize(body.namespace)
    call = await client.stream(body.to_proto())
    try:
        first = await call.read()  # errors before the first event are answered with their HTTP status
    except grpc.aio.AioRpcError as error:
        raise http_error(error) from error

    async def events() -> AsyncIterator[dict[str, str]]:
        event: Any = first
        try:
            while event is not grpc.aio.EOF:
                kind = event.WhichOneof("event")
                if kind == "sources":
                    yield _event("sources", SearchResult.from_proto(event.sources).model_dump(exclude={"answer"}))
                elif kind == "token":
                    yield _event("token", {"text": event.token})
                elif kind == "done":
                    yield _event("done", SearchMetadata.from_proto(event.done).model_dump())
                event = await call.read()
        except grpc.aio.AioRpcError as error:
            yield _event("error", {"code": error.code().name, "message": error.details()})

    # "\n" between lines, as the page's reader splits on; no keep-alive pings (comment blocks it does not read):
    # an answer lasts no longer than the search timeout.
    return EventSourceResponse(events(), sep="\n", ping=0)


@router.get("/api/traces/{trace_id}", tags=["traces"], response_model=Waterfall)
async def trace(trace_id: TraceId, principal: Authenticated, tempo: TraceQueryDep) -> Waterfall:
    """A trace as a waterfall (read from Tempo): the search page shows each answer's, and an ingestion's. The
    key must be allowed every namespace the trace's spans name."""
    spans = await asyncio.to_thread(fetch_trace, tempo.url, trace_id, tempo.timeout_s)
    if not spans:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"trace {trace_id} is not in Tempo (spans arrive a moment after a request)"
        )
    for namespace in sorted(namespaces(spans)):
        principal.authorize(namespace)
    return waterfall(trace_id, spans)


@router.get("/api/documents/{document_id}", tags=["documents"], response_model=DocumentStatus)
async def document(
    document_id: DocumentId,
    request: Request,
    principal: Authenticated,
    ingest: IngestClientDep,
    namespace: Annotated[Namespace, Query()] = "default",
) -> DocumentStatus | JSONResponse:
    """A document's status as the ingest API knows it (asked with the caller's key); its `trace_id` is the trace
    of the request that ingested it."""
    principal.authorize(namespace)
    credentials = {name: request.headers[name] for name in ("x-api-key", "authorization") if name in request.headers}
    response = await ingest.status(namespace, document_id, credentials)
    if response.status_code != status.HTTP_200_OK:
        return JSONResponse(response.json(), status_code=response.status_code, headers=_retry_after(response))
    return DocumentStatus.model_validate(response.json())


def _retry_after(response: httpx.Response) -> dict[str, str]:
    return {"Retry-After": response.headers["retry-after"]} if "retry-after" in response.headers else {}
