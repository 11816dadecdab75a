"""Each real server answers from Python the way the services will use it."""

from __future__ import annotations

import io
import uuid

import pytest
import redis
import weaviate
from minio.error import S3Error
from weaviate.classes.config import Configure, DataType, Property
from weaviate.classes.query import MetadataQuery

from ragtrace.clients import minio_client, minio_http, redis_client, weaviate_client
from ragtrace.messaging import ensure_topics
from ragtrace.settings import RedisSettings, WeaviateSettings
from ragtrace.storage import Conflict, DocumentStore
from ragtrace_tools.kafka_admin import RawRecord, list_topics, produce, read_topic, topic_partitions
from tests.infra import Infra


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_kafka_produce_and_consume_with_headers_on_a_created_topic(infra: Infra) -> None:
    bootstrap = infra.kafka.bootstrap_servers
    topic = _name("it-topic")
    await ensure_topics(infra.kafka.model_copy(update={"partitions": 3}), [topic])
    assert sorted(await topic_partitions(bootstrap, topic)) == [0, 1, 2]
    sent = [
        RawRecord(f"value-{i}".encode(), f"doc-{i}".encode(), [("traceparent", f"00-{i:032x}-{i:016x}-01".encode())])
        for i in range(5)
    ]
    assert await produce(bootstrap, topic, sent) == 5
    received = {r.key: (r.value, dict(r.headers)) for r in await read_topic(bootstrap, topic)}
    assert len(received) == 5
    assert received[b"doc-3"] == (b"value-3", {"traceparent": f"00-{3:032x}-{3:016x}-01".encode()})


async def test_kafka_does_not_create_topics_on_first_use(infra: Infra) -> None:
    bootstrap = infra.kafka.bootstrap_servers
    topic = _name("never-created")
    with pytest.raises(Exception, match="UnknownTopicOrPartition"):
        await produce(bootstrap, topic, [RawRecord(b"x")], timeout_ms=2000)
    assert topic not in await list_topics(bootstrap)


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


def test_minio_conditional_writes_let_one_writer_win(infra: Infra) -> None:
    """The document store's preconditions on the real server: a new object only if there is none, a
    replacement only of the version read; the loser of each race gets Conflict and the object stays the
    winner's."""
    http = minio_http(infra.minio)
    store = DocumentStore(minio_client(infra.minio, http), http, _name("it-bucket"))
    store.ensure_bucket()
    store.write_object("ns/doc.json", b'{"v": 1}', None)
    with pytest.raises(Conflict):
        store.write_object("ns/doc.json", b'{"v": "second creator"}', None)
    data, etag = store.read_object("ns/doc.json")
    assert data == b'{"v": 1}' and etag
    store.write_object("ns/doc.json", b'{"v": 2}', etag)
    with pytest.raises(Conflict):
        store.write_object("ns/doc.json", b'{"v": "stale writer"}', etag)
    assert store.read_object("ns/doc.json")[0] == b'{"v": 2}'


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
