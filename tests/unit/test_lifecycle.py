"""The document lifecycle end to end, in-process: the ingest use case, then the indexer's, over an in-memory
object store that keeps S3's conditional-write rules and counts every request. A new document costs three
round trips; re-posts, duplicates, superseded and redelivered events keep the guarantees."""

from __future__ import annotations

import io
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import urllib3
from minio import Minio
from minio.error import S3Error
from opentelemetry import trace
from redis.asyncio import Redis

from indexer.worker import Indexing
from ingest.ingestion import Ingestion
from ragtrace.errors import DependencyUnavailable
from ragtrace.messaging import Batch, Delivery, Publisher, Record
from ragtrace.schemas import Chunk, ChunkBatch, DocumentEvent, DocumentState, EventType
from ragtrace.settings import KafkaSettings
from ragtrace.storage import DocumentStore
from ragtrace.vectorstore.faiss_store import FaissStore
from ragtrace.vectorstore.generations import GenerationalStore

KAFKA = KafkaSettings(documents_topic="unit.documents", chunks_topic="unit.chunks")
NAMESPACE = "ns"


class Response(io.BytesIO):
    def __init__(self, data: bytes, etag: str) -> None:
        super().__init__(data)
        self.headers = {"etag": f'"{etag}"'}

    def release_conn(self) -> None:
        return None


class ObjectStore:
    """The part of MinIO's client (and of its connection pool) the document store uses, in memory, with S3's
    preconditions."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.requests: Counter[str] = Counter()

    def bucket_exists(self, bucket: str) -> bool:
        return True

    def get_object(self, bucket: str, key: str) -> Response:
        self.requests["GET"] += 1
        if key not in self.objects:
            raise _s3_error("NoSuchKey")
        return Response(*self.objects[key])

    def presigned_put_object(self, bucket: str, key: str, expires: timedelta) -> str:
        return key  # signing costs no round trip

    def request(self, method: str, url: str, body: bytes, headers: dict[str, str], **_: object) -> PutResponse:
        """The store's conditional write: a PUT to the presigned URL."""
        self.requests["PUT"] += 1
        current = self.objects.get(url)
        if "If-None-Match" in headers and current is not None:
            return PutResponse(412, "PreconditionFailed")
        if "If-Match" in headers and (current is None or headers["If-Match"] != f'"{current[1]}"'):
            return PutResponse(412, "PreconditionFailed")
        self.objects[url] = (body, uuid.uuid4().hex)
        return PutResponse(200)


class PutResponse:
    def __init__(self, status: int, error_code: str = "") -> None:
        self.status = status
        self.data = f"<Error><Code>{error_code}</Code></Error>".encode()
        self.headers: dict[str, str] = {}


def _s3_error(code: str) -> S3Error:
    return S3Error(cast(Any, None), code, code, None, None, None)


class Events:
    """The ingest API's publisher: what it would put on Kafka, or DependencyUnavailable while `down`."""

    def __init__(self) -> None:
        self.sent: list[DocumentEvent] = []
        self.down = False

    async def publish(self, topic: str, key: bytes, event: DocumentEvent) -> None:
        if self.down:
            raise DependencyUnavailable("kafka", "no broker")
        self.sent.append(event)


class Cache:
    async def incr(self, key: str) -> int:
        return 1

    async def aclose(self) -> None:
        return None


class Pipeline:
    def __init__(self, tmp_path: Path) -> None:
        self.objects = ObjectStore()
        self.store = DocumentStore(cast(Minio, self.objects), cast(urllib3.PoolManager, self.objects))
        self.events = Events()
        self.ingestion = Ingestion(self.store, cast(Publisher, self.events), KAFKA)
        self.index = GenerationalStore(FaissStore(tmp_path))
        self.indexing = Indexing(self.store, self.index, cast("Redis[bytes]", Cache()))

    async def ingest(self, document_id: str, text: str) -> str:
        return (await self.ingestion.accept(NAMESPACE, document_id, text, {"title": document_id})).status

    async def index_events(self, *events: DocumentEvent) -> list[Exception | None]:
        """What the indexer does with the chunk batches the embedding worker makes of `events` (one chunk
        each, vector and text from the event); each delivery's failure, if any."""
        batches = [_chunks(event) for event in events]
        delivered = Batch([Delivery(cast(Record, None), trace.INVALID_SPAN) for _ in batches])  # records: DLQ only
        await self.indexing.handle(batches, delivered)
        return [d.error for d in delivered.deliveries]

    def state(self, document_id: str) -> DocumentState | None:
        status = self.ingestion.lifecycle.status(NAMESPACE, document_id)
        return status.status if status else None


def _chunks(event: DocumentEvent) -> ChunkBatch:
    if event.type is not EventType.UPSERT:
        return ChunkBatch.of(event, [])
    text = event.text or ""
    vector = [1.0] + [0.0] * 7
    chunk = Chunk(chunk_id=f"{event.document_id}:0", chunk_no=0, text=text, start=0, end=len(text), vector=vector)
    return ChunkBatch.of(event, [chunk], model="unit-model", dimension=8)


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    return Pipeline(tmp_path)


async def test_a_new_document_costs_three_object_store_round_trips(pipeline: Pipeline) -> None:
    assert await pipeline.ingest("tides", "The tide turns twice a day.") == "accepted"
    (event,) = pipeline.events.sent
    assert event.text == "The tide turns twice a day.", "the event carries the text: no read-back"
    assert await pipeline.index_events(event) == [None]
    assert pipeline.objects.requests == {"GET": 1, "PUT": 2}, "ingest: one write; indexer: a read and a write"
    assert pipeline.state("tides") is DocumentState.INDEXED
    assert pipeline.index.count(NAMESPACE, "tides") == 1


async def test_a_repost_of_settled_content_changes_nothing_and_announces_nothing(pipeline: Pipeline) -> None:
    await pipeline.ingest("tides", "The tide turns twice a day.")
    await pipeline.index_events(*pipeline.events.sent)
    before = Counter(pipeline.objects.requests)
    assert await pipeline.ingest("tides", "The tide turns twice a day.") == "indexed"
    assert Counter(pipeline.objects.requests) - before == {"PUT": 1, "GET": 1}, "a refused write, then a read"
    assert len(pipeline.events.sent) == 1


async def test_duplicate_content_is_found_in_the_index_and_in_the_same_batch(pipeline: Pipeline) -> None:
    for document_id in ("original", "copy"):
        await pipeline.ingest(document_id, "Honeybees dance.")
    await pipeline.index_events(*pipeline.events.sent)  # both in one batch: the first is the original
    await pipeline.ingest("later-copy", "Honeybees dance.")
    await pipeline.index_events(pipeline.events.sent[-1])  # the original is in the index by now
    assert pipeline.state("original") is DocumentState.INDEXED
    for copy in ("copy", "later-copy"):
        status = pipeline.ingestion.lifecycle.status(NAMESPACE, copy)
        assert status is not None and status.status is DocumentState.DUPLICATE and status.duplicate_of == "original"
        assert pipeline.index.count(NAMESPACE, copy) == 0


async def test_a_superseded_event_changes_neither_the_index_nor_the_record(pipeline: Pipeline) -> None:
    await pipeline.ingest("log", "Version one.")
    await pipeline.ingest("log", "Version two.")
    first, second = pipeline.events.sent
    await pipeline.index_events(first)
    assert pipeline.index.count(NAMESPACE, "log") == 0
    assert pipeline.state("log") is DocumentState.ACCEPTED
    await pipeline.index_events(second)
    hits = pipeline.index.keyword_search(NAMESPACE, "version", 10)
    assert [h.content for h in hits] == ["Version two."]


async def test_a_redelivered_event_settles_the_same_outcome_again(pipeline: Pipeline) -> None:
    await pipeline.ingest("tides", "The tide turns twice a day.")
    (event,) = pipeline.events.sent
    await pipeline.index_events(event)
    assert await pipeline.index_events(event) == [None]  # its write finds the ETag changed: it reads again
    status = pipeline.ingestion.lifecycle.status(NAMESPACE, "tides")
    assert status is not None and status.status is DocumentState.INDEXED and status.chunks == 1
    assert pipeline.index.count(NAMESPACE) == 1


async def test_a_delete_removes_the_chunks_and_the_text(pipeline: Pipeline) -> None:
    await pipeline.ingest("tides", "The tide turns twice a day.")
    await pipeline.index_events(*pipeline.events.sent)
    await pipeline.ingestion.delete(NAMESPACE, "tides")
    await pipeline.index_events(pipeline.events.sent[-1])
    assert pipeline.state("tides") is DocumentState.DELETED
    assert pipeline.index.count(NAMESPACE) == 0
    record, _ = pipeline.store.read(NAMESPACE, "tides")
    assert record is not None and record.text is None


async def test_a_refused_event_gives_ownership_back(pipeline: Pipeline) -> None:
    await pipeline.ingest("tides", "The tide turns twice a day.")
    await pipeline.index_events(*pipeline.events.sent)
    pipeline.events.down = True
    with pytest.raises(DependencyUnavailable):
        await pipeline.ingest("tides", "A new version nobody will hear of.")
    with pytest.raises(DependencyUnavailable):
        await pipeline.ingest("new", "A document that was never accepted.")
    record, _ = pipeline.store.read(NAMESPACE, "tides")
    assert record is not None and record.status.status is DocumentState.INDEXED
    assert record.text == "The tide turns twice a day.", "the previous version is back, text and all"
    assert pipeline.state("new") is DocumentState.FAILED
