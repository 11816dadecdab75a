"""The embedding worker embeds a batch part by part and hands each part to the producer once it is embedded.

Orchestration only, with a counting model and a recording publisher; the real path through Kafka is in
tests/integration (test_ingestion, test_tracing).
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from opentelemetry import trace

from embedding.engine import TextChunk
from embedding.worker import EMBED_PARTS, Embedding, _Prepared, parts_of
from ragtrace.errors import DependencyUnavailable
from ragtrace.schemas import ChunkBatch, DocumentEvent, EventType
from ragtrace.settings import KafkaSettings


def _prepared(number: int, chunks: int, kind: EventType = EventType.UPSERT) -> _Prepared:
    event = DocumentEvent(
        type=kind, document_id=f"d{number}", namespace="ns", ingest_id="i", text="t", accepted_at=datetime.now(UTC)
    )
    texts = [TextChunk(c, f"doc {number} chunk {c}", 0, 1) for c in range(chunks)]
    return _Prepared(event, trace.INVALID_SPAN, texts if kind is EventType.UPSERT else ())


class CountingEngine:
    """Vectors that say which text they embed (its document number), and a log of calls."""

    model_name, device, dimension, chunk_tokens = "m", "cpu", 2, 200

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.calls: list[int] = []
        self.log: list[str] = []
        self.lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.calls.append(len(texts))
            self.log.append(f"embed {len(texts)}")
        return np.array([[float(t.split()[1]), float(t.split()[3])] for t in texts], dtype=np.float32).reshape(-1, 2)


class RecordingPublisher:
    def __init__(self, engine: CountingEngine, refuse: bool = False) -> None:
        self.engine = engine
        self.refuse = refuse
        self.sent: list[ChunkBatch] = []

    async def publish_each(self, topic: str, messages: list[tuple[bytes, Any, trace.Span]]) -> list[Any]:
        self.engine.log.append(f"publish {len(messages)}")
        self.sent.extend(batch for _, batch, _ in messages)
        await asyncio.sleep(0)
        return [DependencyUnavailable("kafka", "down") if self.refuse else None for _ in messages]


def test_parts_are_consecutive_whole_documents_of_at_least_the_size() -> None:
    items = [_prepared(n, chunks) for n, chunks in enumerate([3, 1, 1, 4, 2, 1])]
    parts = parts_of(items, 4)
    assert [[p.event.document_id for p in part] for part in parts] == [["d0", "d1"], ["d2", "d3"], ["d4", "d5"]]
    assert parts_of([], 4) == []
    deletions = [_prepared(n, 0, EventType.DELETE) for n in range(2)]
    assert [len(part) for part in parts_of([*deletions, *items[:2], *deletions], 4)] == [6]


def test_each_part_is_published_as_soon_as_it_is_embedded() -> None:
    engine = CountingEngine(batch_size=4)
    publisher = RecordingPublisher(engine)
    items = [_prepared(n, 2) for n in range(40)] + [_prepared(40, 0, EventType.DELETE)]
    asyncio.run(Embedding(KafkaSettings(), engine, publisher)._embed_and_publish(items))  # type: ignore[arg-type]
    # 80 chunks: EMBED_PARTS parts of 20, each embedded in one call, then published while the next is embedded.
    assert engine.calls == [80 // EMBED_PARTS] * EMBED_PARTS
    assert engine.log[:3] == ["embed 20", "publish 10", "embed 20"]
    assert [b.document_id for b in publisher.sent] == [f"d{n}" for n in range(41)]
    for number, batch in enumerate(publisher.sent[:40]):
        assert [c.vector for c in batch.chunks] == [[number, 0.0], [number, 1.0]]  # its own vectors, in order
    assert publisher.sent[40].type is EventType.DELETE and publisher.sent[40].chunks == []


def test_a_small_batch_is_one_part_of_one_model_batch() -> None:
    engine = CountingEngine(batch_size=256)
    asyncio.run(
        Embedding(KafkaSettings(), engine, RecordingPublisher(engine))._embed_and_publish(  # type: ignore[arg-type]
            [_prepared(n, 1) for n in range(100)]
        )
    )
    assert engine.calls == [100]


def test_a_refused_part_fails_the_whole_batch() -> None:
    engine = CountingEngine(batch_size=4)
    work = Embedding(KafkaSettings(), engine, RecordingPublisher(engine, refuse=True))  # type: ignore[arg-type]
    with pytest.raises(DependencyUnavailable):
        asyncio.run(work._embed_and_publish([_prepared(n, 2) for n in range(8)]))
