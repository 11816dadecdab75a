"""The Kafka layer: with ragtrace_tools/kafka_admin.py (the operator side, for tools and tests), the only module
that talks to FastStream's Kafka broker and to aiokafka.

- Topics are created by the application with explicit partitions (auto-creation is off in ragtrace's Kafka).
- Producing: an idempotent producer (acks=all) behind FastStream publishers declared on the broker; a publish
  succeeds or raises DependencyUnavailable("kafka") within its deadline, and a failed publish costs the
  producer (see `Publisher`).
- Consuming: FastStream batch subscribers with manual acknowledgement: the batch's offsets are committed only
  after the handler's effects are durable, and a batch that raises is rewound and redelivered. The
  `BatchDelivery` middleware adds what FastStream does not do for a batch:
  * one processing span per message, a child of the producer's context in its headers (the aiokafka
    instrumentation's send span), so each document keeps one trace through a batch;
  * undecodable messages go to the dead-letter topic at once, and of one key's events in a batch only the
    last is acted on (a document's events share a key, as do a bucket object's notifications: hence a
    partition and an order);
  * per-message retries with backoff, then the dead-letter topic with the error in its headers;
  * while a dependency is down (DependencyUnavailable) nothing is dead-lettered: the batch waits and retries.
  Handlers take the decoded events (`list[Model]`) and the `Batch` (each event's span; `fail` a message).
Trace context in the headers comes from opentelemetry-instrumentation-aiokafka (ragtrace/telemetry.py);
FastStream's own Kafka telemetry is deliberately not used, so there is one set of messaging spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeAlias, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import IllegalStateError, KafkaError
from fast_depends.pydantic import PydanticSerializer
from faststream import Context
from faststream.kafka import KafkaBroker
from faststream.kafka.publisher.producer import AioKafkaFastProducer
from faststream.kafka.publisher.usecase import DefaultPublisher
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.message import StreamMessage
from faststream.middlewares import AckPolicy, BaseMiddleware
from opentelemetry import trace
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    before_sleep_log,
    retry_if_exception_type,
    retry_if_result,
    wait_exponential,
)

from ragtrace.errors import DependencyUnavailable, PoisonMessage
from ragtrace.metrics import (
    CONSUMER_LAG,
    DEAD_LETTERS,
    WORKER_BATCH_DURATION,
    WORKER_BATCH_SIZE,
    WORKER_IN_FLIGHT,
    WORKER_MESSAGES,
)
from ragtrace.schemas import DocumentEvent, DocumentRef, message_key
from ragtrace.settings import KafkaSettings
from ragtrace.telemetry import extract_context, messaging_attributes, skip_message, span_failed

log = logging.getLogger(__name__)
tracer = trace.get_tracer("ragtrace.messaging")

TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
# How FastStream encodes published models by default (what it would pass connecting a producer of its own).
MESSAGE_SERIALIZER = PydanticSerializer(use_fastdepends_errors=False)


def pipeline_topics(settings: KafkaSettings) -> list[str]:
    topics = [settings.documents_topic, settings.chunks_topic, settings.inbox_topic]
    return topics + [settings.dead_letter_topic(t) for t in topics]


def inbox_topics(settings: KafkaSettings) -> list[str]:
    """Where MinIO's notification target publishes (it needs the topic before it starts) and its dead letters."""
    return [settings.inbox_topic, settings.dead_letter_topic(settings.inbox_topic)]


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


def new_broker(settings: KafkaSettings, *middlewares: Any) -> KafkaBroker:
    """A FastStream Kafka broker for subscribers and declared publishers. It makes no producer of its own
    (`consumer_only`): the `Publisher` on it owns the producer it hands over, so that it can replace one that
    broke through FastStream's public producer API. On SIGTERM it lets the batch in flight finish."""
    return KafkaBroker(
        settings.bootstrap_servers,
        consumer_only=True,
        request_timeout_ms=30_000,
        graceful_timeout=30.0,
        middlewares=middlewares,
        logger=log,
        log_level=logging.DEBUG,  # FastStream's "Received"/"Processed" lines, one per batch
    )


# Producing -----------------------------------------------------------------------------------------------


class Publisher:
    """Publishes Pydantic events through publishers declared on a broker (one per topic, with its message
    model, so the AsyncAPI document describes them). Each publish succeeds or raises
    DependencyUnavailable("kafka") within `timeout_s`; its producer gives up on a message soon after that
    deadline, but a message may still be delivered after a reported failure: consumers must not act on a
    request the caller was told failed (see ragtrace/lifecycle.py). Connects lazily, so a service starts while
    Kafka is down; a failed call costs the producer, since an idempotent producer whose sequence numbers went
    out of step while the broker restarted never sends again, so the next call starts a fresh one.

    The producer is idempotent with acks=all: a retried send never duplicates, an acknowledged one is on every
    in-sync replica; a message not delivered within `request_timeout_ms` expires in the producer instead of
    being sent later. The Publisher makes it and hands it to the broker (a `new_broker` makes none)."""

    def __init__(
        self,
        broker: KafkaBroker,
        settings: KafkaSettings,
        timeout_s: float | None = None,
        creates_topics: bool = True,
        request_timeout_ms: int = 30_000,
    ) -> None:
        self.broker = broker
        self.creates_topics = creates_topics  # False: the application creates them at start-up
        self.settings = settings
        self.timeout_s = timeout_s or settings.publish_timeout_s
        self.request_timeout_ms = request_timeout_ms
        self._publishers: dict[str, DefaultPublisher] = {}
        self._lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None  # the one handed to the broker, while it is trusted
        self._tasks: set[asyncio.Task[None]] = set()

    def declare(self, topic: str, model: type[BaseModel], description: str, title: str | None = None) -> None:
        """`title`: the AsyncAPI channel's name, where another service publishes to the same topic too."""
        self._publishers[topic] = self.broker.publisher(topic, schema=model, description=description, title=title)

    def start_warm_up(self) -> None:
        """Connect and create the topics in the background, so the first publish does not pay for it."""

        until_connected = AsyncRetrying(
            retry=retry_if_exception_type((KafkaError, OSError)),
            wait=wait_exponential(multiplier=0.5, max=10.0),
            before_sleep=before_sleep_log(log, logging.WARNING),
        )
        self._spawn(until_connected(self._connect))

    async def _connect(self) -> None:
        async with self._lock:
            if self._producer is not None:
                return
            if self.creates_topics:
                await ensure_topics(self.settings)
            await self.broker.connect()  # once; again it does nothing
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.bootstrap_servers,
                acks="all",
                enable_idempotence=True,
                max_request_size=self.settings.max_message_bytes,
                request_timeout_ms=self.request_timeout_ms,
                linger_ms=2,
            )
            try:
                await cast(AioKafkaFastProducer, self.broker.config.producer).connect(producer, MESSAGE_SERIALIZER)
            except BaseException:
                self._spawn(_stop_quietly(producer))  # a producer that did not start still holds its client
                raise
            self._producer = producer

    @contextlib.asynccontextmanager
    async def _call(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._connect()
                yield
        except (TimeoutError, KafkaError, OSError) as error:
            self._renew_producer()
            reason = (
                f"no answer within {self.timeout_s:g}s"
                if isinstance(error, TimeoutError)
                else f"the broker refused or dropped the connection ({type(error).__name__})"
            )
            raise DependencyUnavailable("kafka", f"{what}: {reason}") from error

    async def publish(
        self, topic: str, key: bytes, event: BaseModel | bytes, headers: dict[str, str] | None = None
    ) -> None:
        async with self._call(f"publishing to {topic} failed"):
            await self._publishers[topic].publish(event, key=key, headers=headers)

    async def publish_each(
        self, topic: str, messages: Sequence[tuple[bytes, BaseModel, trace.Span]]
    ) -> list[DependencyUnavailable | None]:
        """Many messages to one topic, each handed to the producer in its span's context (the instrumentation's
        send span is its child); then their acknowledgements are awaited together, the deadline starting once
        all are handed over: handing them over is this process's own work, and the producer sends nothing while
        it goes on. Per message: None, or DependencyUnavailable if it was not acknowledged in time (or not
        handed over at all); any failure costs the producer, as in `publish`."""
        what = f"publishing to {topic} failed"
        sent: list[asyncio.Future[Any]] = []
        refused: DependencyUnavailable | None = None
        for key, event, span in messages:
            try:
                with trace.use_span(span):
                    async with self._call(what):
                        sent.append(await self._publishers[topic].publish(event, key=key, no_confirm=True))
            except DependencyUnavailable as error:
                refused = error
                break
        done = (await asyncio.wait(sent, timeout=self.timeout_s))[0] if sent else set()
        late = DependencyUnavailable("kafka", f"{what}: no acknowledgement within {self.timeout_s:g}s")
        outcomes: list[DependencyUnavailable | None] = [
            None if future in done and future.exception() is None else late for future in sent
        ]
        outcomes += [refused or late] * (len(messages) - len(sent))
        if any(outcomes):
            self._renew_producer()
        return outcomes

    async def check(self) -> None:
        """Readiness: what a publish would do now: the same producer (or a fresh one, after a failure) and a
        metadata round trip to the broker, within the publish deadline."""
        async with self._call("no metadata from the broker"):
            if self._producer is None:
                raise KafkaError("the producer is not started")
            await self._producer.client.fetch_all_metadata()

    def _renew_producer(self) -> None:
        """Give up the producer after a failed call: it is stopped in the background and the next call
        connects a fresh one."""
        if self._producer is not None:
            self._spawn(_stop_quietly(self._producer))
            self._producer = None

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # referenced until done
        task.add_done_callback(self._tasks.discard)

    async def stop_producer(self) -> None:
        """Flush and stop the producer (the broker does not: it did not make it)."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await _stop_quietly(producer)

    async def close(self) -> None:
        """Stop the producer and the broker, for a Publisher on a broker of its own."""
        for task in self._tasks:
            task.cancel()
        await self.stop_producer()
        await self.broker.stop()


async def _stop_quietly(producer: AIOKafkaProducer, timeout_s: float = 5.0) -> None:
    """Stop a discarded producer; its flush may wait on a broker that is gone, so it gets a deadline."""
    try:
        async with asyncio.timeout(timeout_s):
            await producer.stop()
    except (TimeoutError, KafkaError, OSError) as error:
        log.info("discarded Kafka producer did not stop cleanly (%s)", type(error).__name__)
        await producer.client.close()


def documents_publisher(settings: KafkaSettings, broker: KafkaBroker | None = None) -> Publisher:
    """The ingest API's publisher of document events (on a broker of its own unless one is given)."""
    request_timeout_ms = int(settings.publish_timeout_s * 800)
    publisher = Publisher(broker or new_broker(settings), settings, request_timeout_ms=request_timeout_ms)
    publisher.declare(
        settings.documents_topic,
        DocumentEvent,
        "A document accepted (upsert) or deleted through the ingest API, keyed by namespace/document_id",
    )
    return publisher


# Consuming -----------------------------------------------------------------------------------------------


@dataclass
class Delivery:
    """One consumed message on its way through a batch handler."""

    record: Record
    span: trace.Span
    event: DocumentRef | None = None  # decoded once, when the batch arrives
    attempts: int = 0
    error: Exception | None = None


@dataclass
class Batch:
    """Beside a handler's events: each event's delivery, by the same position."""

    deliveries: list[Delivery]

    def span(self, position: int) -> trace.Span:
        """The event's processing span, in its document's trace."""
        return self.deliveries[position].span

    def fail(self, position: int, error: Exception) -> None:
        """This event's own failure: it is retried, then dead-lettered; the others are acknowledged."""
        self.deliveries[position].error = span_failed(self.deliveries[position].span, error)

    def skip(self, position: int, reason: str) -> None:
        skip_message(self.deliveries[position].span, reason)


# What a batch handler declares to get the `Batch` of the events it is given.
CurrentBatch = Annotated[Batch, Context("ragtrace_batch")]
DeadLetterHook = Callable[[DocumentRef, Exception], Awaitable[object]]


@dataclass
class DeliveryPolicy:
    """How a worker's batches are delivered: FastStream broker middleware (one per worker broker)."""

    group: str
    model: type[DocumentRef]
    dead_letters: Publisher
    on_dead_letter: DeadLetterHook
    max_attempts: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    lag_reported: set[TopicPartition] = field(default_factory=set)  # partitions with a lag series

    def __call__(self, msg: Any, /, *, context: Any) -> BatchDelivery:
        return BatchDelivery(msg, context=context, policy=self)


class BatchDelivery(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: Any, policy: DeliveryPolicy) -> None:
        super().__init__(msg, context=context)
        self.policy = policy

    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]) -> Any:
        if isinstance(msg.raw_message, ConsumerRecord):
            return await call_next(msg)  # not a batch subscriber's message
        records: Sequence[Record] = msg.raw_message
        topic = records[0].topic
        started = time.perf_counter()
        deliveries = [Delivery(record, self._processing_span(record)) for record in records]
        WORKER_IN_FLIGHT.labels(topic).inc(len(records))
        try:
            await self._deliver(call_next, msg, await self._current(deliveries))
        finally:
            WORKER_IN_FLIGHT.labels(topic).dec(len(records))
            for delivery in deliveries:
                delivery.span.end()
        WORKER_BATCH_SIZE.labels(topic).observe(len(records))
        WORKER_BATCH_DURATION.labels(topic).observe(time.perf_counter() - started)
        await self._record_lag(getattr(msg, "consumer", None))
        return None

    def _processing_span(self, record: Record) -> trace.Span:
        return tracer.start_span(
            f"process {record.topic}",
            context=extract_context(record.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes=messaging_attributes(
                record.topic,
                "process",
                group=self.policy.group,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
            ),
        )

    async def _current(self, deliveries: list[Delivery]) -> list[Delivery]:
        """The deliveries to act on: each key's last event (keyless ones: each document's), last in the order
        the events show (`DocumentRef.happened_before`) or else in the order they arrived, a re-index event
        apart from the owner's own. Undecodable ones are dead-lettered at once; a key's earlier events in the
        batch are acknowledged as superseded (acting on them too, concurrently, could apply them out of order)."""
        last: dict[tuple[bytes, int | None], Delivery] = {}
        for delivery in deliveries:
            try:
                event = self.policy.model.model_validate_json(delivery.record.value or b"")
            except ValidationError as error:
                poison = PoisonMessage(f"not a {self.policy.model.__name__}: {error}")
                delivery.attempts = 1
                await self._dead_letter(delivery, span_failed(delivery.span, poison))
                continue
            # The key, not the document: notifications of two buckets may name the same document. A re-index
            # event never supersedes the owner's own event, nor is superseded by it.
            identity = (delivery.record.key or message_key(event.namespace, event.document_id), event.generation)
            delivery.event = event
            kept = last.get(identity)
            if kept is not None and kept.event is not None and event.happened_before(kept.event):
                # A late copy of an older event (MinIO's second notification target): the newer one stays.
                skip_message(delivery.span, "superseded by a later event in the same batch, which arrived first")
                continue
            if kept is not None:
                skip_message(kept.span, "superseded by a later event in the same batch")
            last[identity] = delivery
        current = set(map(id, last.values()))
        return [d for d in deliveries if id(d) in current]

    async def _deliver(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any], pending: list[Delivery]
    ) -> None:
        """Hand the pending deliveries to the handler; retry each failed one with backoff, then dead-letter it."""
        if not pending:  # every message of the batch was dead-lettered, undecodable
            return
        topic = msg.raw_message[0].topic

        async def one_round() -> list[Delivery]:
            """Deliver the pending messages once; what is left to retry (each failed one under max_attempts)."""
            nonlocal pending
            await self._call_until_dependencies_answer(call_next, msg, pending)
            failed = [d for d in pending if d.error is not None]
            WORKER_MESSAGES.labels(topic, "processed").inc(len(pending) - len(failed))
            retry: list[Delivery] = []
            for delivery, error in ((d, d.error) for d in failed if d.error is not None):
                delivery.attempts += 1
                if isinstance(error, PoisonMessage) or delivery.attempts >= self.policy.max_attempts:
                    await self._dead_letter(delivery, error)
                else:
                    retry.append(delivery)
            WORKER_MESSAGES.labels(topic, "retried").inc(len(retry))
            pending = retry
            return retry

        # Every message still pending has been through each round, so the round is each one's attempt number.
        rounds = AsyncRetrying(
            retry=retry_if_result(bool),
            wait=self._backoff(),
            before_sleep=_log_retried_messages,
        )
        await rounds(one_round)

    async def _call_until_dependencies_answer(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any], pending: list[Delivery]
    ) -> None:
        """Call the handler with the pending messages, again and again while a dependency is down: nothing is
        dead-lettered for an outage, and nothing is committed until it passes."""
        subset = copy.copy(msg)  # the handler is given just these messages, decoded once already
        subset.raw_message = tuple(d.record for d in pending)
        subset.body = [d.record.value for d in pending]
        events = [d.event for d in pending]

        async def decoded(_: StreamMessage[Any]) -> list[DocumentRef | None]:
            return events

        subset.set_decoder(decoded)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DependencyUnavailable),
            wait=self._backoff(),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        with self.context.scope("ragtrace_batch", Batch(pending)):
            async for attempt in retrying:
                with attempt:
                    for delivery in pending:
                        delivery.error = None
                    await call_next(subset)

    def _backoff(self) -> wait_exponential:
        """backoff_s, doubled each attempt, up to max_backoff_s."""
        return wait_exponential(multiplier=self.policy.backoff_s, max=self.policy.max_backoff_s)

    async def _dead_letter(self, delivery: Delivery, error: Exception) -> None:
        record = delivery.record
        # The trace context is the instrumentation's to inject (this send is a child of the processing span).
        kept = {k: v.decode(errors="replace") for k, v in record.headers or () if not k.startswith("ragtrace.error")}
        for header in ("traceparent", "tracestate"):
            kept.pop(header, None)
        headers = {
            **kept,
            "ragtrace.error.type": type(error).__name__,
            "ragtrace.error.message": str(error)[:2000],
            "ragtrace.error.attempts": str(delivery.attempts),
            "ragtrace.source.topic": record.topic,
            "ragtrace.source.partition": str(record.partition),
            "ragtrace.source.offset": str(record.offset),
            "ragtrace.consumer.group": self.policy.group,
        }
        with trace.use_span(delivery.span, end_on_exit=False):
            await self.policy.dead_letters.publish(
                self.policy.dead_letters.settings.dead_letter_topic(record.topic),
                record.key or b"",
                record.value or b"",
                headers=headers,
            )
        WORKER_MESSAGES.labels(record.topic, "dead_lettered").inc()
        DEAD_LETTERS.labels(record.topic, type(error).__name__).inc()
        log.error(
            "dead-lettered %s[%d]@%d after %d attempt(s): %r",
            record.topic,
            record.partition,
            record.offset,
            delivery.attempts,
            error,
        )
        try:
            ref = DocumentRef.model_validate_json(record.value or b"")
        except ValidationError:
            return  # undecodable: no document to tell
        await self.policy.on_dead_letter(ref, error)

    async def _record_lag(self, consumer: Any) -> None:
        """Per assigned partition: its end (as last fetched) less this consumer's position. Partitions that
        moved to another member in a rebalance drop out, so lag is reported once per partition."""
        if not isinstance(consumer, AIOKafkaConsumer):
            return  # FastStream's in-memory test broker has no real consumer
        assigned: set[TopicPartition] = consumer.assignment()
        for tp in assigned:
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue  # nothing fetched from it yet
            try:
                position = await consumer.position(tp)
            except IllegalStateError:
                continue  # revoked meanwhile
            CONSUMER_LAG.labels(tp.topic, str(tp.partition), self.policy.group).set(max(highwater - position, 0))
        for tp in self.policy.lag_reported - assigned:
            CONSUMER_LAG.remove(tp.topic, str(tp.partition), self.policy.group)
        self.policy.lag_reported = assigned


def batch_subscriber(
    broker: KafkaBroker, settings: KafkaSettings, topic: str, group: str, max_records: int, description: str
) -> BatchSubscriber:
    """A batch subscriber committing by hand: offsets are committed after the handler returns (its effects
    durable), and a batch whose handler raises is rewound, so it is delivered again."""
    return broker.subscriber(
        topic,
        batch=True,
        group_id=group,
        auto_offset_reset="earliest",
        max_records=max_records,
        # How long a poll waits when nothing is there; FastStream then also sleeps as long before the next
        # poll, so this bounds the latency an idle worker adds to each hop (records present return at once).
        batch_timeout_ms=50,
        fetch_max_bytes=settings.max_message_bytes * 2,
        max_partition_fetch_bytes=settings.max_message_bytes,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        description=description,
    )


def _log_retried_messages(state: RetryCallState) -> None:
    retried = state.outcome.result() if state.outcome is not None else []
    log.warning("retrying %d message(s) in %.1fs", len(retried), state.upcoming_sleep)
