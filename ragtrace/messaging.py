"""Kafka for ragtrace: topics the application creates, an idempotent producer, and a publisher that fails fast."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

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
    request the caller was told failed (see ingest/app.py). Starts (and restarts) its producer
    lazily, so a service can start while Kafka is down and recover when it returns."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._topics_ready = False
        self._warm_up: asyncio.Task[None] | None = None

    def start_warm_up(self) -> None:
        """Connect and create the topics in the background, so the first publish does not pay for it."""

        async def warm_up() -> None:
            delay = 0.5
            while True:
                try:
                    await self._ready_producer()
                    return
                except (KafkaError, OSError) as error:
                    log.warning("Kafka not reachable yet (%r); retrying in %.1fs", error, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)

        self._warm_up = asyncio.create_task(warm_up())

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

    async def publish(self, topic: str, key: bytes, event: BaseModel, headers: Headers | None = None) -> None:
        with tracer.start_as_current_span(
            f"send {topic}", kind=trace.SpanKind.PRODUCER, attributes=messaging_attributes(topic, "send", key=key)
        ) as span:
            try:
                async with asyncio.timeout(self.settings.publish_timeout_s):
                    producer = await self._ready_producer()
                    metadata = await producer.send_and_wait(
                        topic, event.model_dump_json().encode(), key=key, headers=inject_headers(headers)
                    )
            except (TimeoutError, KafkaError, OSError) as error:
                raise DependencyUnavailable("kafka", f"publishing to {topic} failed: {error!r}") from error
            span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
            span.set_attribute("messaging.kafka.offset", metadata.offset)

    async def check(self) -> None:
        """Readiness: a metadata round trip to the broker within the publish timeout."""
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                producer = await self._ready_producer()
                await producer.client.fetch_all_metadata()
        except (TimeoutError, KafkaError, OSError) as error:
            raise DependencyUnavailable("kafka", repr(error)) from error

    async def close(self) -> None:
        if self._warm_up is not None:
            self._warm_up.cancel()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
