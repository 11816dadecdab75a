"""The Kafka layer's operator side: what tools and tests ask of the cluster beside the pipeline's own traffic
(is the broker up, how far behind is a consumer group, what is in a topic, produce raw records). Topics are
created by ragtrace.messaging.ensure_topics, the pipeline's own way. With ragtrace/messaging.py, the only module
that talks to aiokafka."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

MAX_RECORD_BYTES = 64 * 1024 * 1024  # above any topic's max.message.bytes


@dataclass(frozen=True)
class RawRecord:
    """A record as it is on the wire: key, value and headers, untouched."""

    value: bytes
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = field(default_factory=tuple)


@contextlib.asynccontextmanager
async def _admin(bootstrap: str, timeout_ms: int = 5000) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def controller_elected(bootstrap: str, timeout_ms: int = 2000) -> bool:
    """True when the broker answers a real Metadata request and names a controller."""
    async with _admin(bootstrap, timeout_ms) as admin:
        cluster = await admin.describe_cluster()
        return int(cluster.get("controller_id", -1)) >= 0


async def list_topics(bootstrap: str) -> list[str]:
    async with _admin(bootstrap) as admin:
        return list(await admin.list_topics())


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    async with _admin(bootstrap) as admin:
        [description] = await admin.describe_topics([topic])
        return [p["partition"] for p in description["partitions"]]


async def group_lag(bootstrap: str, groups: Mapping[str, str]) -> int:
    """Records written to each topic and not yet committed by its consumer group (topic → group), in all."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        async with _admin(bootstrap) as admin:
            total = 0
            for topic, group in groups.items():
                partitions = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
                ends = await consumer.end_offsets(partitions)
                committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
                total += sum(
                    ends[tp] - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0)
                    for tp in partitions
                )
            return total
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, key_prefix: bytes = b"") -> list[RawRecord]:
    """Every record in the topic now whose key starts with `key_prefix`, partition by partition, in order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=MAX_RECORD_BYTES,
        fetch_max_bytes=MAX_RECORD_BYTES,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[RawRecord] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for records in (await consumer.getmany(*partitions, timeout_ms=1000)).values():
                found += [
                    RawRecord(r.value or b"", r.key, tuple(r.headers))
                    for r in records
                    if (r.key or b"").startswith(key_prefix)
                ]
        return found
    finally:
        await consumer.stop()


async def produce(bootstrap: str, topic: str, records: Iterable[RawRecord], timeout_ms: int = 30_000) -> int:
    """Produce the records as they are (no pipeline producer, no trace context added); how many."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, max_request_size=MAX_RECORD_BYTES, request_timeout_ms=timeout_ms
    )
    await producer.start()
    try:
        produced = 0
        for record in records:
            await producer.send_and_wait(topic, record.value, key=record.key, headers=list(record.headers))
            produced += 1
        return produced
    finally:
        await producer.stop()
