"""The EmbeddingService over gRPC: the workers' engine for query time, micro-batched, with health checks."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedding.engine import EmbeddingEngine
from ragtrace.v1 import embedding_pb2, embedding_pb2_grpc
from tests.metrics import value
from tests.pipeline import Pipeline

TEXTS = [f"Question {i}: how do glaciers {['move', 'melt', 'form', 'carve'][i % 4]}?" for i in range(24)]


def _batches(pipeline: Pipeline) -> tuple[float, float]:
    """(model calls, texts) of the service so far, from its /metrics."""
    metrics = httpx.get(f"http://127.0.0.1:{pipeline.services.ports.embedding_service_metrics}/metrics").text
    return value(metrics, "ragtrace_embedding_batch_size_count"), value(metrics, "ragtrace_embedding_batch_size_sum")


def test_concurrent_embeds_match_the_engine_alone_and_embed_batch_matches_it_batched(
    faiss_pipeline: Pipeline, engine: EmbeddingEngine
) -> None:
    """The service runs the default engine: concurrent Embed calls share model calls, and each gets the vector
    its text gets alone (every backend's rule, tests/unit/test_embedding_backends.py)."""
    target = f"127.0.0.1:{faiss_pipeline.services.ports.embedding_grpc}"
    calls_before, texts_before = _batches(faiss_pipeline)

    async def embed_all() -> tuple[list[embedding_pb2.EmbedResponse], embedding_pb2.EmbedBatchResponse]:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            singles = await asyncio.gather(*(stub.Embed(embedding_pb2.EmbedRequest(text=t), timeout=30) for t in TEXTS))
            batch = await stub.EmbedBatch(embedding_pb2.EmbedBatchRequest(texts=TEXTS), timeout=30)
            return list(singles), batch

    singles, batch = asyncio.run(embed_all())
    calls_after, texts_after = _batches(faiss_pipeline)
    assert texts_after - texts_before == 2 * len(TEXTS)  # the singles, then the batch in one call
    assert calls_after - calls_before - 1 < len(TEXTS), "concurrent Embed calls were gathered into shared batches"

    assert batch.model == "all-MiniLM-L6-v2" and batch.dimension == 384
    one_by_one = np.array([s.vector for s in singles])
    together = np.array([e.vector for e in batch.embeddings])
    assert np.allclose(one_by_one, np.vstack([engine.embed([t]) for t in TEXTS]), atol=1e-5)
    assert np.allclose(together, engine.embed(TEXTS), atol=1e-5)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-3)
    assert np.allclose(one_by_one, together, atol=1e-5), "a text's vector, alone or in a batch"


def test_health_and_invalid_arguments(faiss_pipeline: Pipeline) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{faiss_pipeline.services.ports.embedding_grpc}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="ragtrace.v1.EmbeddingService"), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        for request, call, fragment in [
            (embedding_pb2.EmbedRequest(text="   "), stub.Embed, "empty"),
            (embedding_pb2.EmbedBatchRequest(texts=[]), stub.EmbedBatch, "at least one"),
            (embedding_pb2.EmbedBatchRequest(texts=["ok", "x" * 20_001]), stub.EmbedBatch, "text 1"),
        ]:
            with pytest.raises(grpc.RpcError) as error:
                call(request, timeout=5)
            assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert fragment in error.value.details()
