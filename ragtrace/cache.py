"""The Redis cache of the query path: search results and query embeddings.

Result keys carry the namespace's version, which the indexer increments after every write to that
namespace (ingest or delete): a cached answer is never staler than the index. Entries also expire (TTL).
Redis being down is a cache miss, never an error: callers go on uncached.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

LOOKUPS = Counter(
    "ragtrace_cache_lookups",
    "Cache lookups by cache (result, embedding) and result (hit, miss, error: Redis unreachable)",
    ["cache", "result"],
)

_CACHE_ERRORS = (RedisError, OSError, TimeoutError)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def normalize_query(query: str) -> str:
    return " ".join(query.lower().split())


def _version_key(namespace: str) -> str:
    return f"ragtrace:nsver:{namespace}"


async def bump_namespace(client: aioredis.Redis[bytes], namespace: str) -> bool:
    """Invalidate every cached result of the namespace; False when Redis could not be reached."""
    try:
        await client.incr(_version_key(namespace))
        return True
    except _CACHE_ERRORS as error:
        log.warning("could not invalidate the cache of namespace %s: %r", namespace, error)
        return False


class SearchCache:
    def __init__(self, client: aioredis.Redis[bytes], ttl_s: int, embedding_ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.embedding_ttl_s = embedding_ttl_s

    async def result_key(self, namespace: str, parameters: dict[str, Any]) -> str | None:
        """The key of a search's result, or None when Redis is down (then nothing is cached)."""
        try:
            version = int(await self.client.get(_version_key(namespace)) or 0)
        except _CACHE_ERRORS as error:
            log.warning("cache unavailable: %r", error)
            return None
        return f"ragtrace:search:{namespace}:{version}:{_digest(parameters)}"

    async def get(self, key: str | None, cache: str = "result") -> bytes | None:
        if key is None:
            LOOKUPS.labels(cache, "error").inc()  # the key needed Redis too
            return None
        try:
            value = await self.client.get(key)
        except _CACHE_ERRORS as error:
            log.warning("cache unavailable: %r", error)
            LOOKUPS.labels(cache, "error").inc()
            return None
        LOOKUPS.labels(cache, "miss" if value is None else "hit").inc()
        return value

    async def put(self, key: str | None, value: bytes) -> None:
        if key is None:
            return
        try:
            await self.client.set(key, value, ex=self.ttl_s)
        except _CACHE_ERRORS as error:
            log.warning("cache unavailable: %r", error)

    @staticmethod
    def embedding_key(model: str, query: str) -> str:
        return f"ragtrace:embedding:{model}:{_digest(normalize_query(query))}"

    async def get_embedding(self, model: str, query: str) -> np.ndarray | None:
        cached = await self.get(self.embedding_key(model, query), cache="embedding")
        return None if cached is None else np.frombuffer(cached, dtype=np.float32)

    async def put_embedding(self, model: str, query: str, vector: np.ndarray) -> None:
        try:
            await self.client.set(
                self.embedding_key(model, query), vector.astype(np.float32).tobytes(), ex=self.embedding_ttl_s
            )
        except _CACHE_ERRORS as error:
            log.warning("cache unavailable: %r", error)
