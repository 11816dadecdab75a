"""The HTTP gateway of the query path: JSON and server-sent events over the gRPC SearchService, and a page.

    POST /api/search          JSON in, JSON out
    POST /api/search/stream   the same, answered as server-sent events: sources, token..., done
    GET  /                    a small search page

gRPC status → HTTP: INVALID_ARGUMENT 422, NOT_FOUND 404, UNAVAILABLE 503 (naming the dependency),
DEADLINE_EXCEEDED 504. Run: `python -m query.app` (127.0.0.1:8080 by default).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import grpc
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints

from query.settings import MODE_NAMES, MODES, SEARCH_SERVICE_HEALTH, GatewaySettings
from ragtrace.auth import Authenticated
from ragtrace.clients import channel_ready, grpc_channel
from ragtrace.errors import DependencyUnavailable
from ragtrace.http import create_service_app
from ragtrace.runtime import run_http_service
from ragtrace.schemas import Namespace, Text
from ragtrace.v1 import search_pb2, search_pb2_grpc

STATIC = Path(__file__).parent / "static"


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
    namespace: Namespace = "default"
    top_k: Annotated[StrictInt, Field(ge=1, le=100)] = 5
    mode: Literal["vector", "keyword", "hybrid"] = "hybrid"
    alpha: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    filters: dict[Text, Text] = Field(default_factory=dict)
    generate: StrictBool = True
    max_tokens: Annotated[StrictInt | None, Field(ge=1, le=4096)] = None

    def to_request(self) -> search_pb2.SearchRequest:
        request = search_pb2.SearchRequest(
            query=self.query,
            namespace=self.namespace,
            top_k=self.top_k,
            mode=MODES[self.mode],
            filters=self.filters,
            generate=self.generate,
            max_tokens=self.max_tokens or 0,
        )
        if self.alpha is not None:
            request.alpha = self.alpha
        return request


def metadata_json(metadata: search_pb2.SearchMetadata) -> dict[str, Any]:
    return {
        "trace_id": metadata.trace_id,
        "cache_hit": metadata.cache_hit,
        "mode": MODE_NAMES.get(metadata.mode, "hybrid"),
        "top_k": metadata.top_k,
        "alpha": round(metadata.alpha, 4),
        "namespace": metadata.namespace,
        "num_sources": metadata.num_sources,
        "generator": metadata.generator,
        "generator_reason": metadata.generator_reason,
        "model": metadata.model,
        "input_tokens": metadata.input_tokens,
        "output_tokens": metadata.output_tokens,
        "time_to_first_token_ms": round(metadata.time_to_first_token_ms, 2),
        "timings_ms": {k: round(getattr(metadata.timings_ms, k), 2) for k in ("embed", "search", "generate", "total")},
    }


_INTEGER_FIELDS = ("chunk_no", "start", "end")


def _source_metadata(source: search_pb2.Source) -> dict[str, Any]:
    # protobuf's Struct keeps every number as a double; the chunk's positions are integers.
    metadata = json_format.MessageToDict(source.metadata)
    return {k: int(v) if k in _INTEGER_FIELDS and isinstance(v, float) else v for k, v in metadata.items()}


def sources_json(response: search_pb2.SearchResponse) -> list[dict[str, Any]]:
    return [
        {
            "id": s.id,
            "document_id": s.document_id,
            "content": s.content,
            "score": round(s.score, 6),
            "metadata": _source_metadata(s),
        }
        for s in response.sources
    ]


def response_json(response: search_pb2.SearchResponse) -> dict[str, Any]:
    return {"answer": response.answer, "sources": sources_json(response), "metadata": metadata_json(response.metadata)}


def _http_error(error: grpc.aio.AioRpcError) -> Exception:
    code, details = error.code(), error.details() or ""
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return HTTPException(422, details)
    if code is grpc.StatusCode.NOT_FOUND:
        return HTTPException(404, details)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return HTTPException(504, f"the search took too long: {details}")
    if code is grpc.StatusCode.UNAVAILABLE:
        dependency = dict(error.trailing_metadata() or ()).get("dependency")
        return DependencyUnavailable(str(dependency or "search-service"), details)
    return HTTPException(502, f"the search service failed: {code.name}: {details}")


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


class SearchClient:
    """The gRPC channel to the search service, opened on first use: a grpc.aio channel belongs to the event
    loop it is created in, which is the server's, not the one (if any) that builds the app."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel: grpc.aio.Channel | None = None
        self._stub: search_pb2_grpc.SearchServiceStub | None = None

    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc_channel(self.target)
        return self._channel

    async def stub(self) -> search_pb2_grpc.SearchServiceStub:
        await channel_ready(self.channel(), "search-service")
        self._stub = self._stub or search_pb2_grpc.SearchServiceStub(self.channel())
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    search_client = SearchClient(settings.search_target)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await search_client.close()

    async def search_service_ready() -> None:
        """The search service's own readiness (its index and embedding service), not only its liveness."""
        request = health_pb2.HealthCheckRequest(service=SEARCH_SERVICE_HEALTH)
        try:
            response = await health_pb2_grpc.HealthStub(search_client.channel()).Check(request, timeout=1)
        except grpc.aio.AioRpcError as error:
            raise DependencyUnavailable("search-service", error.code().name) from error
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            raise DependencyUnavailable("search-service", "not serving: its index or embedding service is down")

    app = create_service_app(
        "ragtrace search gateway",
        settings.max_body_bytes,
        readiness={"search-service": search_service_ready},
        lifespan=lifespan,
    )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.post("/api/search", tags=["search"])
    async def search(body: SearchBody, principal: Authenticated) -> JSONResponse:
        """Sources for the query and, with `generate`, an answer citing them."""
        principal.authorize(body.namespace)
        try:
            response = await (await search_client.stub()).Search(body.to_request(), timeout=settings.search_timeout_s)
        except grpc.aio.AioRpcError as error:
            raise _http_error(error) from error
        return JSONResponse(response_json(response))

    @app.post(
        "/api/search/stream",
        tags=["search"],
        response_class=StreamingResponse,
        responses={
            200: {"description": "Server-sent events: sources, token..., done", "content": {"text/event-stream": {}}}
        },
    )
    async def search_stream(body: SearchBody, principal: Authenticated) -> StreamingResponse:
        """The same search as server-sent events: `sources`, then `token` events, then `done`."""
        principal.authorize(body.namespace)
        call = (await search_client.stub()).SearchStream(body.to_request(), timeout=settings.search_timeout_s)
        try:
            first = await call.read()  # errors before the first event are answered with their HTTP status
        except grpc.aio.AioRpcError as error:
            raise _http_error(error) from error

        async def events() -> AsyncIterator[bytes]:
            event: Any = first
            try:
                while event is not grpc.aio.EOF:
                    kind = event.WhichOneof("event")
                    if kind == "sources":
                        yield _event(
                            "sources",
                            {"sources": sources_json(event.sources), "metadata": metadata_json(event.sources.metadata)},
                        )
                    elif kind == "token":
                        yield _event("token", {"text": event.token})
                    elif kind == "done":
                        yield _event("done", metadata_json(event.done))
                    event = await call.read()
            except grpc.aio.AioRpcError as error:
                yield _event("error", {"code": error.code().name, "message": error.details()})

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    return app


def main() -> None:
    settings = GatewaySettings()
    GrpcAioInstrumentorClient().instrument()
    run_http_service("search-gateway", lambda: create_app(settings), settings.host, settings.port)


if __name__ == "__main__":
    main()
