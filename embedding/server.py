"""EmbeddingService over gRPC: the workers' engine, for query-time embedding.

Concurrent `Embed` calls are gathered into one model batch (micro-batching): the calls that arrive while the
model is busy form the next batch, so a call on an idle service never waits for company. Every engine gives a
text the vector it gets alone (embedding/onnx_backend.py runs int8 texts alone), so sharing a batch changes
no caller's answer. Serves the gRPC health checking protocol.

Run: `python -m embedding.server` (127.0.0.1:50062 by default).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import numpy as np

from embedding.engine import EmbeddingEngine
from embedding.settings import EmbeddingSettings
from ragtrace.runtime import run_async_service, start_grpc_server
from ragtrace.v1 import embedding_pb2, embedding_pb2_grpc

log = logging.getLogger(__name__)

MAX_TEXTS = 1024
MAX_CHARS = 20_000


class MicroBatcher:
    """Gathers single texts from concurrent callers into one `engine.embed` call."""

    def __init__(self, engine: EmbeddingEngine, max_batch: int) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] = asyncio.Queue()

    async def embed(self, text: str) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self.queue.put((text, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                vectors = await asyncio.to_thread(self.engine.embed, [text for text, _ in batch])
            except Exception as error:  # every caller in the batch gets the engine's error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), vector in zip(batch, vectors, strict=True):
                if not future.done():
                    future.set_result(vector)


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, engine: EmbeddingEngine, batcher: MicroBatcher) -> None:
        self.engine = engine
        self.batcher = batcher

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedResponse:
        await _validate(context, [request.text])
        vector = await self.batcher.embed(request.text)
        return embedding_pb2.EmbedResponse(
            vector=vector.tolist(), model=self.engine.model_name, dimension=self.engine.dimension
        )

    async def EmbedBatch(
        self, request: embedding_pb2.EmbedBatchRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedBatchResponse:
        texts = list(request.texts)
        await _validate(context, texts)
        vectors = await asyncio.to_thread(self.engine.embed, texts)
        return embedding_pb2.EmbedBatchResponse(
            embeddings=[embedding_pb2.Embedding(vector=v.tolist()) for v in vectors],
            model=self.engine.model_name,
            dimension=self.engine.dimension,
        )


async def _validate(context: grpc.aio.ServicerContext, texts: list[str]) -> None:
    if not texts:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "texts: give at least one text")
    if len(texts) > MAX_TEXTS:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"texts: at most {MAX_TEXTS} per call")
    for position, text in enumerate(texts):
        if not text.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"text {position}: empty or whitespace")
        if len(text) > MAX_CHARS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"text {position}: over {MAX_CHARS} characters")


async def serve(settings: EmbeddingSettings) -> None:
    engine = EmbeddingEngine(settings, serves_queries=True)
    batcher = MicroBatcher(engine, engine.batch_size)
    batching = asyncio.create_task(batcher.run())
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    server = await start_grpc_server(
        "ragtrace.v1.EmbeddingService",
        address,
        settings.service_metrics_port,
        lambda s: embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(EmbeddingServicer(engine, batcher), s),
    )
    log.info("EmbeddingService on %s (%s on %s)", address, engine.model_name, engine.device)
    try:
        await server.wait_for_termination()
    finally:
        batching.cancel()


def main() -> None:
    run_async_service("embedding-service", lambda: serve(EmbeddingSettings()), grpc_aio=True)


if __name__ == "__main__":
    main()
