"""Kafka for ragtrace: topics the application creates, an idempotent producer, and a publisher that fails fast."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from opentelemetry import trace
from pydantic import BaseModel

from ragtrace.errors import DependencyUnavailable
from ragtrace.settings import KafkaSettings
from ragtrace.telemetry import Headers, inject_headers, messaging_attributes

log = logging.getLogger(__name__)
tracer = trace.get_tracer("ragtrace.messaging")

TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code


def pipeline_topics(settings: KafkaSettings) -> list[str]:
    topics = [settings.documents_topic, settings.chunks_topic]
    return topics + [settings.dead_letter_topic(t) for t in topics]


async def ensure_topics(settings: KafkaSettings, topics: Sequence[str] | None = None) -> None:
    """Create the pipeline's topics with explicit partitions, if missing (topic auto-creation is off)."""
    wanted = list(topics or pipeline_topics(settings))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=5000)
    await admin.start()
    try:
        missing = [t for t in wanted if t not in set(await admin.list_topics())]
        if not missing:
            return
        config = {"max.message.bytes": str(settings.max_message_bytes)}
        response = await admin.create_topics(
            [NewTopic(t, settings.partitions, settings.replication_factor, topic_configs=config) for t in missing]
        )
        for topic, code, *message in response.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):  # another process may have created it meanwhile
                raise KafkaError(f"creating topic {topic} failed with error code {code}: {message}")
        log.info("created Kafka topics %s", missing)
    finally:
        await admin.close()


def new_producer(settings: KafkaSettings, request_timeout_ms: int = 30_000) -> AIOKafkaProducer:
    """Idempotent, acks=all: a retried send never duplicates, an acknowledged one is on every in-sync replica.
    A message not delivered within `request_timeout_ms` expires in the producer instead of being sent later."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        max_request_size=settings.max_message_bytes,
        request_timeout_ms=request_timeout_ms,
        linger_ms=2,
    )


class Publisher:
    """Publishes Pydantic events with trace context in the headers; each publish succeeds or raises
    DependencyUnavailable("kafka") within `publish_timeout_s`. Its producer gives up on a message soon after
    that deadline, but a message may still be delivered after a reported failure: consumers must not act on a
    request the caller was told failed (see ragtrace/lifecycle.py). Starts its producer lazily, so a service can
    start while Kafka is down, and replaces it after a failure, so it recovers when Kafka returns."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._topics_ready = False
        self._tasks: set[asyncio.Task[None]] = set()

    def start_warm_up(self) -> None:
        """Connect and create the topics in the background, so the first publish does not pay for it."""

        async def warm_up() -> None:
            delay = 0.5
            while True:
                try:
                    await self._ready_producer()
                    return
                except (KafkaError, OSError) as error:
                    log.warning("Kafka not reachable yet (%s); retrying in %.1fs", type(error).__name__, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)

        self._spawn(warm_up())

    async def _ready_producer(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = new_producer(self.settings, int(self.settings.publish_timeout_s * 800))
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            if not self._topics_ready:
                await ensure_topics(self.settings)
                self._topics_ready = True
            return self._producer

    @contextlib.asynccontextmanager
    async def _producer_call(self, what: str) -> AsyncIterator[AIOKafkaProducer]:
        """The producer, for one call bounded by the publish timeout. A failed call costs the producer: one
        whose send failed may never send again (an idempotent producer whose sequence numbers went out of step
        while the broker restarted stays broken for good), so the next call starts a fresh one."""
        producer: AIOKafkaProducer | None = None
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                producer = await self._ready_producer()
                yield producer
        except (TimeoutError, KafkaError, OSError) as error:
            if producer is not None:
                self._discard(producer)
            reason = (
                f"no answer within {self.settings.publish_timeout_s:g}s"
                if isinstance(error, TimeoutError)
                else (f"the broker refused or dropped the connection ({type(error).__name__})")
            )
            raise DependencyUnavailable("kafka", f"{what}: {reason}") from error

    async def publish(self, topic: str, key: bytes, event: BaseModel, headers: Headers | None = None) -> None:
        with tracer.start_as_current_span(
            f"send {topic}", kind=trace.SpanKind.PRODUCER, attributes=messaging_attributes(topic, "send", key=key)
        ) as span:
            async with self._producer_call(f"publishing to {topic} failed") as producer:
                metadata = await producer.send_and_wait(
                    topic, event.model_dump_json().encode(), key=key, headers=inject_headers(headers)
                )
            span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
            span.set_attribute("messaging.kafka.offset", metadata.offset)

    async def check(self) -> None:
        """Readiness: what a publish would do now: the same producer (or a fresh one, after a failure) and a
        metadata round trip to the broker, within the publish timeout."""
        async with self._producer_call("no metadata from the broker") as producer:
            await producer.client.fetch_all_metadata()

    def _discard(self, producer: AIOKafkaProducer) -> None:
        if self._producer is producer:
            self._producer = None
            self._spawn(_stop_quietly(producer))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # referenced until done
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


async def _stop_quietly(producer: AIOKafkaProducer, timeout_s: float = 5.0) -> None:
    """Stop a discarded producer; its flush may wait on a broker that is gone, so it gets a deadline."""
    try:
        async with asyncio.timeout(timeout_s):
            await producer.stop()
    except (TimeoutError, KafkaError, OSError) as error:
        log.info("discarded Kafka producer did not stop cleanly (%s)", type(error).__name__)
        await producer.client.close()
