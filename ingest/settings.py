"""Settings of the ingest API (RAGTRACE_INGEST_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_INGEST_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8082
    max_body_bytes: int = 10 * 1024 * 1024
    # Re-index jobs (docs/reindex.md): how often each is looked at, and after how long without progress the
    # events of its pending documents are published again.
    reindex_poll_s: float = Field(1.0, gt=0)
    reindex_stall_s: float = Field(60.0, gt=0)


# MinIO's two Kafka notification targets of the watched bucket, by ID (MINIO_NOTIFY_KAFKA_*_<ID>, set by the
# local stack and the Kind manifests), both publishing onto the inbox topic. IMMEDIATE sends each event as it
# happens (milliseconds) and drops it when Kafka does not take it; DURABLE keeps each event in a queue directory
# until Kafka has it, through outages, but sends it only when MinIO next replays that queue (every 3 s, fixed).
# Together: fast, and nothing lost; the second copy of an event changes nothing (docs/ingestion.md).
INBOX_TARGET_IMMEDIATE = "RAGTRACE"
INBOX_TARGET_DURABLE = "RAGTRACEDURABLE"


def minio_kafka_arn(target_id: str) -> str:
    """The queue ARN MinIO offers for its Kafka target `target_id` (no region configured)."""
    return f"arn:minio:sqs::{target_id}:kafka"


class InboxSettings(BaseSettings):
    """The watched bucket (RAGTRACE_INBOX_*, ingest/inbox.py): `<namespace>/<path>` objects become documents."""

    model_config = SettingsConfigDict(env_prefix="RAGTRACE_INBOX_", extra="ignore", frozen=True)

    bucket: str = "ragtrace-inbox"
    # The queues MinIO names its Kafka targets by (a JSON list); the bucket is subscribed to each at start-up.
    notification_arns: list[str] = [minio_kafka_arn(INBOX_TARGET_IMMEDIATE), minio_kafka_arn(INBOX_TARGET_DURABLE)]
    max_batch: int = 64
    metrics_port: int = 9468
