"""The Redis cache of the query path: search results and query embeddings.

Result keys carry the namespace's version, which the indexer increments after every write to that
namespace (ingest or delete): a cached answer is never staler than the index. Entries also expire (TTL).
Redis being down is a cache miss, never an error: callers go on uncached.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
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


@dataclass(frozen=True)
class CacheLookup:
    """What a search found in the cache: the result's key (None when Redis is down or no result was looked up:
    then none is kept either), the result, and the query's embedding."""

    key: str | None = None
    result: bytes | None = None
    embedding: np.ndarray | None = None


class SearchCache:
    """Two round trips to Redis on a search's way in and one on its way out, whatever it finds: each command is
    a socket write, a parse and a span in the search service (issue 28: a tenth of its CPU was five commands)."""

    def __init__(self, client: aioredis.Redis[bytes], ttl_s: int, embedding_ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.embedding_ttl_s = embedding_ttl_s

    async def lookup(self, namespace: str, parameters: dict[str, Any] | None, embedding_key: str | None) -> CacheLookup:
        """The result cached for `parameters` (None: no result is looked up) and the embedding under
        `embedding_key` (None: none). The namespace's version comes with the embedding in one MGET; the result,
        whose key carries that version, in a second command. Redis down: nothing found, and no key."""
        keys = ([_version_key(namespace)] if parameters is not None else []) + (
            [embedding_key] if embedding_key else []
        )
        if not keys:
            return CacheLookup()
        try:
            values = await self.client.mget(keys)
            embedding = values[-1] if embedding_key else None
            key, result = None, None
            if parameters is not None:
                key = f"ragtrace:search:{namespace}:{int(values[0] or 0)}:{_digest(parameters)}"
                result = await self.client.get(key)
        except _CACHE_ERRORS as error:
            log.warning("cache unavailable: %r", error)
            for cache, asked in (("result", parameters is not None), ("embedding", embedding_key is not None)):
                if asked:
                    LOOKUPS.labels(cache, "error").inc()
            return CacheLookup()
        if parameters is not None:
            LOOKUPS.labels("result", "miss" if result is None else "hit").inc()
        if embedding_key and result is None:  # counted where it is used: a result found needs no embedding
            LOOKUPS.labels("embedding", "miss" if embedding is None else "hit").inc()
        vector = None if embedding is None else np.frombuffer(embedding, dtype=np.float32)
        return CacheLookup(key, result, vector)

    async def put(self, key: str | None, result: bytes | None, embedding: tuple[str, np.ndarray] | None = None) -> None:
        """The result under its key (when both are given) and (key, vector) of a query's embedding, in one
        round trip; a failure is logged and costs only a later miss."""
        pipeline = self.client.pipeline(transaction=False)
        if key is not None and result is not None:
            pipeline.set(key, result, ex=self.ttl_s)
        if embedding is not None:
            pipeline.set(embedding[0], embedding[1].astype(np.float32).tobytes(), ex=self.embedding_ttl_s)
        if not len(pipeline):
            return
        try:
            await pipeline.execute()
        except _CACHE_ERRORS as error:
            log.warning("cache unavailable: %r", error)

    @staticmethod
    def embedding_key(model: str, query: str) -> str:
        return f"ragtrace:embedding:{model}:{_digest(normalize_query(query))}"
