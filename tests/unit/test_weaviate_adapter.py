"""The one private use of weaviate-client (ragtrace/vectorstore/weaviate_store.py: its gRPC retry replaced by
fail-fast). These fail on the upgrade that renames or reshapes what the adapter replaces."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
import weaviate.connect.v4
import weaviate.retry
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ragtrace.vectorstore.weaviate_store import GrpcUnavailable, _FailFast


def test_weaviate_client_still_retries_through_the_class_the_adapter_replaces() -> None:
    assert weaviate.connect.v4._Retry is _FailFast  # type: ignore[attr-defined,comparison-overlap]
    source = inspect.getsource(weaviate.connect.v4)
    assert "_Retry(4).with_exponential_backoff(" in source and "_Retry(4).awith_exponential_backoff(" in source
    for name in ("with_exponential_backoff", "awith_exponential_backoff"):
        theirs = list(inspect.signature(getattr(weaviate.retry._Retry, name)).parameters)
        ours = list(inspect.signature(getattr(_FailFast, name)).parameters)
        assert theirs == ours, f"_Retry.{name} is now {theirs}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_grpc_peer_that_is_gone_fails_at_once_not_after_a_minute_of_retries() -> None:
    with grpc.insecure_channel(f"127.0.0.1:{_closed_port()}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        started = time.monotonic()
        with pytest.raises(GrpcUnavailable, match="searching"):
            _FailFast(4).with_exponential_backoff(0, "searching", check, health_pb2.HealthCheckRequest(), timeout=5)
    assert time.monotonic() - started < 1.0


def test_the_async_path_fails_at_once_too() -> None:
    async def call() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{_closed_port()}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            await _FailFast(4).awith_exponential_backoff(
                0, "batching", check, health_pb2.HealthCheckRequest(), timeout=5
            )

    started = time.monotonic()
    with pytest.raises(GrpcUnavailable, match="batching"):
        asyncio.run(call())
    assert time.monotonic() - started < 1.0


@pytest.fixture
def health_server() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


def test_any_other_status_is_left_for_weaviate_client_to_report(health_server: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{health_server}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        with pytest.raises(grpc.RpcError) as raised:
            _FailFast().with_exponential_backoff(
                0, "x", check, health_pb2.HealthCheckRequest(service="none"), timeout=5
            )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
