"""Each real server answers from Python the way the services will use it."""

from __future__ import annotations

import io
import uuid

import pytest
import redis
import weaviate
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import UnknownTopicOrPartitionError
from minio.error import S3Error
from weaviate.classes.config import Configure, DataType, Property
from weaviate.classes.query import MetadataQuery

from ragtrace.clients import minio_client, redis_client, weaviate_client
from ragtrace.settings import RedisSettings, WeaviateSettings
from tests.infra import Infra


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_kafka_produce_and_consume_with_headers_on_a_created_topic(infra: Infra) -> None:
    bootstrap = infra.kafka.bootstrap_servers
    topic = _name("it-topic")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == 3

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(
                topic,
                f"value-{i}".encode(),
                key=f"doc-{i}".encode(),
                headers=[("traceparent", f"00-{i:032x}-{i:016x}-01".encode())],
            )
            for i in range(5)
        ]
    finally:
        await producer.stop()
    assert {m.partition for m in sent} <= {0, 1, 2}

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=_name("it-group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received: dict[bytes, tuple[bytes, dict[str, bytes]]] = {}
        while len(received) < 5:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, "no records within 10 s"
            for records in batch.values():
                received.update({r.key: (r.value, dict(r.headers)) for r in records})
        await consumer.commit()
    finally:
        await consumer.stop()
    assert received[b"doc-3"] == (b"value-3", {"traceparent": f"00-{3:032x}-{3:016x}-01".encode()})


async def test_kafka_does_not_create_topics_on_first_use(infra: Infra) -> None:
    bootstrap = infra.kafka.bootstrap_servers
    topic = _name("never-created")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    await producer.start()
    try:
        with pytest.raises(UnknownTopicOrPartitionError):
            await producer.send_and_wait(topic, b"x")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()


def test_minio_put_stat_get(infra: Infra) -> None:
    client = minio_client(infra.minio)
    bucket = _name("it-bucket")
    client.make_bucket(bucket)
    body = b"Fahrenheit introduced his scale in 1724."
    client.put_object(
        bucket,
        "default/doc-1.json",
        io.BytesIO(body),
        len(body),
        content_type="application/json",
        metadata={"x-amz-meta-content-hash": "abc"},
    )

    stat = client.stat_object(bucket, "default/doc-1.json")
    response = client.get_object(bucket, "default/doc-1.json")
    try:
        assert response.read() == body
    finally:
        response.close()
        response.release_conn()
    assert stat.size == len(body)
    assert stat.metadata is not None and stat.metadata["x-amz-meta-content-hash"] == "abc"
    with pytest.raises(S3Error) as missing:
        client.stat_object(bucket, "default/absent.json")
    assert missing.value.code == "NoSuchKey"


async def test_redis_set_get_with_ttl_and_password(infra: Infra) -> None:
    client = redis_client(infra.redis)
    key = _name("it-key")
    async with client:
        await client.set(key, b"cached", ex=30)
        assert await client.get(key) == b"cached"
        assert 0 < await client.ttl(key) <= 30
    if infra.source != "env":  # our servers always require the password they were started with
        url = infra.redis.url.get_secret_value()
        anonymous = redis_client(RedisSettings(url="redis://" + url.split("@", 1)[1]))
        async with anonymous:
            with pytest.raises(redis.exceptions.AuthenticationError):
                await anonymous.get(key)


def test_weaviate_collection_insert_and_near_vector(infra: Infra) -> None:
    client = weaviate_client(infra.weaviate)
    name = "It" + uuid.uuid4().hex[:10]
    try:
        collection = client.collections.create(
            name,
            vector_config=Configure.Vectors.self_provided(),
            properties=[Property(name="content", data_type=DataType.TEXT)],
        )
        vectors = {"north": [1.0, 0.0, 0.0], "east": [0.0, 1.0, 0.0], "up": [0.0, 0.0, 1.0]}
        for content, vector in vectors.items():
            collection.data.insert({"content": content}, vector=vector)
        result = collection.query.near_vector([0.9, 0.1, 0.0], limit=2, return_metadata=MetadataQuery(distance=True))
        assert [o.properties["content"] for o in result.objects] == ["north", "east"]
        nearest, second = (o.metadata.distance for o in result.objects)
        assert nearest is not None and second is not None and nearest < second
    finally:
        client.collections.delete(name)
        client.close()


def test_weaviate_refuses_anonymous_access(infra: Infra) -> None:
    if infra.source == "env":
        pytest.skip("servers named by the environment: their auth settings are not ours to assert")
    anonymous = infra.weaviate.model_copy(update={"api_key": None})
    assert isinstance(anonymous, WeaviateSettings)
    with pytest.raises(weaviate.exceptions.WeaviateBaseError, match=r"(?i)401|anonymous|unauthorized"):
        client = weaviate_client(anonymous)
        try:
            client.collections.list_all()
        finally:
            client.close()
