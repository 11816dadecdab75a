"""Clients for the infrastructure, built one way from ragtrace.settings for every service and test."""

from __future__ import annotations

import asyncio

import grpc
import redis.asyncio as aioredis
import urllib3
import weaviate
from minio import Minio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from weaviate.classes.init import AdditionalConfig, Auth, Timeout

from ragtrace.errors import DependencyUnavailable
from ragtrace.settings import MinioSettings, RedisSettings, WeaviateSettings


def grpc_channel(target: str) -> grpc.aio.Channel:
    """A channel to one of our gRPC services; it redials a restarted peer within half a second (gRPC's default
    backoff grows to minutes) and spreads calls over every address the target resolves to (in Kubernetes,
    `dns:///<headless service>:<port>`: one per pod), since one HTTP/2 connection would pin every call to one
    replica. Call `channel_ready` before each call."""
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
            ("grpc.lb_policy_name", "round_robin"),
        ],
    )


async def channel_ready(channel: grpc.aio.Channel, dependency: str, timeout_s: float = 0.75) -> None:
    """Wait (briefly) until the channel is connected: a peer that is back, or still being dialled, is used;
    one that stays unreachable is DependencyUnavailable at once, not after the call's whole deadline."""
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout_s)
    except TimeoutError as error:
        raise DependencyUnavailable(dependency, f"not reachable within {timeout_s:.2f}s") from error


def minio_http(settings: MinioSettings) -> urllib3.PoolManager:
    """The connection pool every MinIO request goes through (the client's, and the document store's
    conditional writes)."""
    # Deadlines on connecting and on every read, and one immediate reconnect at most (never a retried read,
    # which would double the wait on a MinIO that hangs): when MinIO is down or frozen, callers answer 503
    # within about a second.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=settings.timeout_s, read=settings.timeout_s),
        retries=urllib3.Retry(total=1, connect=1, read=0, status=0, other=0, redirect=0),
        maxsize=16,
    )


def minio_client(settings: MinioSettings, http: urllib3.PoolManager | None = None) -> Minio:
    return Minio(
        settings.endpoint,
        access_key=settings.access_key.get_secret_value(),
        secret_key=settings.secret_key.get_secret_value(),
        secure=settings.secure,
        http_client=http or minio_http(settings),
    )


def redis_client(settings: RedisSettings, timeout_s: float = 1.0) -> aioredis.Redis[bytes]:
    # Short timeouts: a cache that is down must cost a request milliseconds, not a hang. One immediate retry on
    # a connection error: a pooled connection to a Redis that restarted fails once, then reconnects.
    return aioredis.Redis.from_url(
        settings.url.get_secret_value(),
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries=1),
        retry_on_error=[RedisConnectionError],
    )


def weaviate_client(settings: WeaviateSettings, timeout_s: float = 5.0) -> weaviate.WeaviateClient:
    """A connected Weaviate v4 client (HTTP for schema, gRPC for data); close it when done."""
    auth = Auth.api_key(settings.api_key.get_secret_value()) if settings.api_key else None
    return weaviate.connect_to_custom(
        http_host=settings.host,
        http_port=settings.http_port,
        http_secure=False,
        grpc_host=settings.host,
        grpc_port=settings.grpc_port,
        grpc_secure=False,
        auth_credentials=auth,
        skip_init_checks=False,
        additional_config=AdditionalConfig(timeout=Timeout(init=timeout_s, query=timeout_s, insert=timeout_s)),
    )
