"""Connection settings for the infrastructure every ragtrace process talks to, read from the environment.

Each group has its own prefix (RAGTRACE_KAFKA_, RAGTRACE_MINIO_, ...). Credentials have no defaults: the
local stack generates them (`make up` writes .state/stack.env) and Kubernetes passes them from Secrets.
"""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _prefixed(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True)


class KafkaSettings(BaseSettings):
    model_config = _prefixed("RAGTRACE_KAFKA_")

    bootstrap_servers: str = "127.0.0.1:9092"
    documents_topic: str = "ragtrace.documents"
    chunks_topic: str = "ragtrace.chunks"
    # MinIO's notifications of the watched bucket (ingest/inbox.py), published by MinIO's Kafka target.
    inbox_topic: str = "ragtrace.inbox"
    dead_letter_suffix: str = ".dlq"
    group_prefix: str = "ragtrace-"  # consumer groups: {prefix}embedding, {prefix}indexer, {prefix}inbox
    partitions: int = 6
    replication_factor: int = 1
    # A 10 MiB document becomes one chunks message of its text plus its vectors.
    max_message_bytes: int = 32 * 1024 * 1024
    publish_timeout_s: float = 0.8  # an API answers 503 within a second when Kafka is away

    def dead_letter_topic(self, topic: str) -> str:
        return topic + self.dead_letter_suffix


class MinioSettings(BaseSettings):
    model_config = _prefixed("RAGTRACE_MINIO_")

    endpoint: str = "127.0.0.1:9000"
    access_key: SecretStr
    secret_key: SecretStr
    secure: bool = False
    bucket: str = "documents"
    # Connect and read deadline of each call: a frozen MinIO is a 503 within about a second, not a hang.
    timeout_s: float = 1.0


class RedisSettings(BaseSettings):
    model_config = _prefixed("RAGTRACE_REDIS_")

    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")  # a URL may carry the password


class WeaviateSettings(BaseSettings):
    model_config = _prefixed("RAGTRACE_WEAVIATE_")

    host: str = "127.0.0.1"
    http_port: int = 8090
    grpc_port: int = 50051
    api_key: SecretStr | None = None


class TraceQuerySettings(BaseSettings):
    """Tempo's HTTP API, where traces are read back (the gateway's trace endpoint, `ragtrace trace`)."""

    model_config = _prefixed("RAGTRACE_TRACE_QUERY_")

    url: str = "http://127.0.0.1:3200"
    timeout_s: float = 1.0  # a Tempo that does not answer is a 503 within about a second
