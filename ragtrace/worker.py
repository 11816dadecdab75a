"""The consumer loop every ragtrace worker runs: batches from a consumer group, at-least-once delivery.

- Offsets are committed only after the handler's effects are durable, so a crash means redelivery, never
  loss; handlers make every write idempotent, so redelivery never duplicates.
- A message whose handling fails is retried with exponential backoff; after `max_attempts` it goes to the
  dead-letter topic with the error in its headers and the handler is told (`dead_lettered`).
  A PoisonMessage (undecodable, invalid) goes there at once.
- While a dependency is down (DependencyUnavailable) nothing is dead-lettered: the batch is retried with
  capped backoff until it passes, without committing.
- Graceful stop: no new fetches, the batch in flight is finished and committed, the group is left.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from ragtrace.errors import DependencyUnavailable, PoisonMessage
from ragtrace.messaging import ensure_topics, new_producer
from ragtrace.metrics import CONSUMER_LAG, DEAD_LETTERS, WORKER_BATCH_DURATION, WORKER_BATCH_SIZE, WORKER_MESSAGES
from ragtrace.settings import KafkaSettings

log = logging.getLogger(__name__)

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


class BatchHandler(Protocol):
    async def handle(self, records: Sequence[Record]) -> dict[int, Exception]:
        """Process the records; return the failures by index into `records` (empty: all succeeded).
        Raise DependencyUnavailable to have the whole batch retried later."""
        ...

    async def dead_lettered(self, record: Record, error: Exception) -> None:
        """Called once a record went to the dead-letter topic (e.g. mark the document failed)."""
        ...

    async def close(self) -> None:
        """Release the handler's connections; called once, when the worker stops."""
        ...


@dataclass(frozen=True)
class WorkerOptions:
    topic: str
    group: str
    max_batch: int = 64
    max_attempts: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    fetch_timeout_ms: int = 200


class KafkaWorker:
    def __init__(self, kafka: KafkaSettings, options: WorkerOptions, handler: BatchHandler) -> None:
        self.kafka = kafka
        self.options = options
        self.handler = handler
        self.stopping = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self._lag_reported: set[TopicPartition] = set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)

    async def run(self) -> None:
        await ensure_topics(self.kafka)
        consumer = AIOKafkaConsumer(
            self.options.topic,
            bootstrap_servers=self.kafka.bootstrap_servers,
            group_id=self.options.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.options.max_batch,
            fetch_max_bytes=self.kafka.max_message_bytes * 2,
            max_partition_fetch_bytes=self.kafka.max_message_bytes,
        )
        dead_letters = new_producer(self.kafka)
        await consumer.start()
        await dead_letters.start()
        self.consumer = consumer
        log.info("consuming %s as group %s", self.options.topic, self.options.group)
        try:
            while not self.stopping.is_set():
                batches = await consumer.getmany(
                    timeout_ms=self.options.fetch_timeout_ms, max_records=self.options.max_batch
                )
                records = [record for partition_records in batches.values() for record in partition_records]
                if records:
                    started = time.perf_counter()
                    await self._process(records, dead_letters)
                    await self._commit(consumer, _next_offsets(records))
                    WORKER_BATCH_SIZE.labels(self.options.topic).observe(len(records))
                    WORKER_BATCH_DURATION.labels(self.options.topic).observe(time.perf_counter() - started)
                await self._record_lag(consumer)
        finally:
            await dead_letters.stop()
            await consumer.stop()  # leaves the group: its partitions move to the other members at once
            await self.handler.close()
            log.info("stopped consuming %s", self.options.topic)

    async def _record_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Per assigned partition: its end (as last fetched) less this consumer's position. Partitions that
        moved to another member in a rebalance drop out, so lag is reported once per partition."""
        assigned = consumer.assignment()
        for tp in assigned:
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue  # nothing fetched from it yet
            try:
                position = await consumer.position(tp)
            except IllegalStateError:
                continue  # revoked meanwhile
            CONSUMER_LAG.labels(tp.topic, str(tp.partition), self.options.group).set(max(highwater - position, 0))
        for tp in self._lag_reported - assigned:
            CONSUMER_LAG.remove(tp.topic, str(tp.partition), self.options.group)
        self._lag_reported = set(assigned)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Commit, waiting out a broker or coordinator that is away. After a rebalance the commit is dropped:
        the new owner of those partitions redelivers the batch, and the writes are idempotent."""
        backoff = self.options.backoff_s
        while True:
            try:
                await consumer.commit(offsets)
                return
            except (CommitFailedError, IllegalStateError) as error:
                log.warning("commit dropped after a rebalance (the batch will be redelivered): %r", error)
                return
            except KafkaError as error:
                if not getattr(error, "retriable", False) and not isinstance(error, KafkaConnectionError):
                    raise
                log.warning("commit failed (%r); retrying in %.1fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.options.max_backoff_s)

    async def _process(self, records: list[Record], dead_letters: AIOKafkaProducer) -> None:
        pending = list(range(len(records)))
        attempts = dict.fromkeys(pending, 0)
        outage_backoff = self.options.backoff_s
        while pending:
            try:
                failures = await self.handler.handle([records[i] for i in pending])
            except DependencyUnavailable as outage:
                log.warning("%s; retrying the batch in %.1fs", outage, outage_backoff)
                await asyncio.sleep(outage_backoff)
                outage_backoff = min(outage_backoff * 2, self.options.max_backoff_s)
                continue
            retry: list[int] = []
            WORKER_MESSAGES.labels(self.options.topic, "processed").inc(len(pending) - len(failures))
            for position, error in failures.items():
                index = pending[position]
                attempts[index] += 1
                if isinstance(error, PoisonMessage) or attempts[index] >= self.options.max_attempts:
                    await self._dead_letter(records[index], error, attempts[index], dead_letters)
                else:
                    retry.append(index)
            WORKER_MESSAGES.labels(self.options.topic, "retried").inc(len(retry))
            if retry:
                delay = min(
                    self.options.backoff_s * 2 ** (max(attempts[i] for i in retry) - 1), self.options.max_backoff_s
                )
                log.warning("retrying %d message(s) in %.1fs", len(retry), delay)
                await asyncio.sleep(delay)
            pending = retry

    async def _dead_letter(self, record: Record, error: Exception, attempts: int, producer: AIOKafkaProducer) -> None:
        topic = self.kafka.dead_letter_topic(record.topic)
        headers = [
            *[(k, v) for k, v in (record.headers or ()) if not k.startswith("ragtrace.error")],
            ("ragtrace.error.type", type(error).__name__.encode()),
            ("ragtrace.error.message", str(error)[:2000].encode()),
            ("ragtrace.error.attempts", str(attempts).encode()),
            ("ragtrace.source.topic", record.topic.encode()),
            ("ragtrace.source.partition", str(record.partition).encode()),
            ("ragtrace.source.offset", str(record.offset).encode()),
            ("ragtrace.consumer.group", self.options.group.encode()),
        ]
        await producer.send_and_wait(topic, record.value, key=record.key, headers=headers)
        WORKER_MESSAGES.labels(record.topic, "dead_lettered").inc()
        DEAD_LETTERS.labels(record.topic, type(error).__name__).inc()
        log.error(
            "dead-lettered %s[%d]@%d after %d attempt(s): %r",
            record.topic,
            record.partition,
            record.offset,
            attempts,
            error,
        )
        await self.handler.dead_lettered(record, error)


def _next_offsets(records: Sequence[Record]) -> dict[TopicPartition, OffsetAndMetadata]:
    last: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        last[tp] = max(last.get(tp, -1), record.offset)
    return {tp: OffsetAndMetadata(offset + 1, "") for tp, offset in last.items()}
