"""The gateway's client of the search service: one gRPC channel, opened on first use (a grpc.aio channel
belongs to the event loop it is created in, which is the server's, not the one, if any, that builds the app).
Its client of the ingest API is ragtrace.ingest_client's, the one every caller uses."""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from query.settings import SEARCH_SERVICE_HEALTH
from ragtrace.clients import channel_ready, grpc_channel
from ragtrace.errors import DependencyUnavailable
from ragtrace.v1 import search_pb2, search_pb2_grpc


class SearchStream(Protocol):
    """A SearchStream call: `read()` gives each SearchEvent, then grpc.aio.EOF."""

    async def read(self) -> Any: ...


class SearchClient:
    def __init__(self, target: str, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
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

    async def search(self, request: search_pb2.SearchRequest) -> search_pb2.SearchResponse:
        response: search_pb2.SearchResponse = await (await self.stub()).Search(request, timeout=self.timeout_s)
        return response

    async def stream(self, request: search_pb2.SearchRequest) -> SearchStream:
        call: SearchStream = (await self.stub()).SearchStream(request, timeout=self.timeout_s)
        return call

    async def ready(self) -> None:
        """The search service's own readiness (its index and embedding service), not only its liveness."""
        request = health_pb2.HealthCheckRequest(service=SEARCH_SERVICE_HEALTH)
        try:
            response = await health_pb2_grpc.HealthStub(self.channel()).Check(request, timeout=1)
        except grpc.aio.AioRpcError as error:
            raise DependencyUnavailable("search-service", error.code().name) from error
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            raise DependencyUnavailable("search-service", "not serving: its index or embedding service is down")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
