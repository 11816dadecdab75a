"""The Kafka layer's batch delivery, on FastStream's in-memory TestKafkaBroker: poison messages, per-message
retries then the dead-letter topic with the error headers, outages that never dead-letter, the last event per
document, and typed handlers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from ragtrace.errors import DependencyUnavailable
from ragtrace.messaging import Batch, CurrentBatch, DeliveryPolicy, Publisher, batch_subscriber, new_broker
from ragtrace.schemas import DocumentEvent, DocumentRef, EventType
from ragtrace.settings import KafkaSettings

KAFKA = KafkaSettings(documents_topic="unit.documents", chunks_topic="unit.chunks")
DEAD_LETTERS = KAFKA.dead_letter_topic(KAFKA.documents_topic)

Behaviour = Callable[[list[DocumentEvent], Batch, int], None]


class Worker:
    """A worker on the test broker whose handler does what `behaviour` says, recording what it saw."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.calls: list[list[str]] = []
        self.dead_letters: list[tuple[bytes, dict[str, str]]] = []
        self.failed: list[tuple[str, str]] = []
        self.broker: KafkaBroker = new_broker(KAFKA)
        publisher = Publisher(self.broker, KAFKA, creates_topics=False)
        publisher.declare(DEAD_LETTERS, DocumentEvent, "dead letters")
        self.broker.add_middleware(
            DeliveryPolicy(
                group="unit",
                model=DocumentEvent,
                dead_letters=publisher,
                on_dead_letter=self._failed,
                backoff_s=0.001,
                max_backoff_s=0.002,
            )
        )

        @batch_subscriber(self.broker, KAFKA, KAFKA.documents_topic, "unit", 64, "documents")
        async def handle(events: list[DocumentEvent], delivered: CurrentBatch) -> None:
            assert all(isinstance(e, DocumentEvent) for e in events), "typed events"
            self.calls.append([e.document_id for e in events])
            behaviour(events, delivered, len(self.calls))

        @self.broker.subscriber(DEAD_LETTERS, group_id="unit-dlq")
        async def dead_letter(message: KafkaMessage) -> None:
            self.dead_letters.append((message.body, message.headers))

    async def _failed(self, ref: DocumentRef, error: Exception) -> None:
        self.failed.append((ref.document_id, type(error).__name__))

    async def deliver(self, *messages: bytes) -> None:
        async with TestKafkaBroker(self.broker) as broker:
            await broker.publish_batch(*messages, topic=KAFKA.documents_topic)


def event(document_id: str, namespace: str = "ns") -> bytes:
    return (
        DocumentEvent(
            document_id=document_id,
            namespace=namespace,
            ingest_id=uuid.uuid4().hex,
            type=EventType.UPSERT,
            accepted_at=datetime.now(UTC),
        )
        .model_dump_json()
        .encode()
    )


def succeed(events: list[DocumentEvent], delivered: Batch, call: int) -> None:
    return None


async def test_every_event_reaches_the_handler_once_when_all_succeed() -> None:
    worker = Worker(succeed)
    await worker.deliver(event("a"), event("b"), event("c"))
    assert worker.calls == [["a", "b", "c"]]
    assert worker.dead_letters == [] and worker.failed == []


async def test_a_poison_message_is_dead_lettered_at_once_and_the_rest_is_handled() -> None:
    worker = Worker(succeed)
    await worker.deliver(event("a"), b"\x00not an event", event("b"))
    assert worker.calls == [["a", "b"]]
    [(body, headers)] = worker.dead_letters
    assert body == b"\x00not an event"
    assert headers["ragtrace.error.type"] == "PoisonMessage"
    assert headers["ragtrace.error.attempts"] == "1"
    assert headers["ragtrace.source.topic"] == KAFKA.documents_topic
    assert headers["ragtrace.consumer.group"] == "unit"
    assert worker.failed == [], "an undecodable message names no document"


async def test_a_failing_message_is_retried_then_dead_lettered_and_its_document_marked() -> None:
    def fail_b(events: list[DocumentEvent], delivered: Batch, call: int) -> None:
        for position, e in enumerate(events):
            if e.document_id == "b":
                delivered.fail(position, ValueError("b cannot be embedded"))

    worker = Worker(fail_b)
    await worker.deliver(event("a"), event("b"), event("c"))
    assert worker.calls == [["a", "b", "c"], ["b"], ["b"]], "only the failed message is retried, 3 attempts"
    [(_, headers)] = worker.dead_letters
    assert headers["ragtrace.error.type"] == "ValueError"
    assert headers["ragtrace.error.message"] == "b cannot be embedded"
    assert headers["ragtrace.error.attempts"] == "3"
    assert worker.failed == [("b", "ValueError")]


async def test_a_dependency_outage_retries_the_batch_and_dead_letters_nothing() -> None:
    def down_twice(events: list[DocumentEvent], delivered: Batch, call: int) -> None:
        if call <= 2:
            raise DependencyUnavailable("minio", "connection refused")

    worker = Worker(down_twice)
    await worker.deliver(event("a"), event("b"))
    assert worker.calls == [["a", "b"]] * 3
    assert worker.dead_letters == [] and worker.failed == []


async def test_only_the_last_event_of_a_document_in_a_batch_is_acted_on() -> None:
    worker = Worker(succeed)
    await worker.deliver(event("a"), event("b"), event("a"), event("a", namespace="other"))
    assert worker.calls == [["b", "a", "a"]]


async def test_an_unexpected_error_reaches_the_broker_so_the_batch_is_not_committed() -> None:
    def crash(events: list[DocumentEvent], delivered: Batch, call: int) -> None:
        raise RuntimeError("bug")

    worker = Worker(crash)
    with pytest.raises(RuntimeError, match="bug"):
        await worker.deliver(event("a"))
    assert worker.dead_letters == []
