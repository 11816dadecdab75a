"""Settings of the ingest API (RAGTRACE_INGEST_*)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_INGEST_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8082
    max_body_bytes: int = 10 * 1024 * 1024


# The ID of MinIO's Kafka notification target that publishes the watched bucket's events onto the inbox topic
# (MINIO_NOTIFY_KAFKA_*_RAGTRACE, set by the local stack and the Kind manifests).
INBOX_TARGET_ID = "RAGTRACE"


class InboxSettings(BaseSettings):
    """The watched bucket (RAGTRACE_INBOX_*, ingest/inbox.py): `<namespace>/<path>` objects become documents."""

    model_config = SettingsConfigDict(env_prefix="RAGTRACE_INBOX_", extra="ignore", frozen=True)

    bucket: str = "ragtrace-inbox"
    # The queue MinIO names its Kafka target by; the bucket is subscribed to it at start-up.
    notification_arn: str = f"arn:minio:sqs::{INBOX_TARGET_ID}:kafka"
    max_batch: int = 64
    metrics_port: int = 9468
