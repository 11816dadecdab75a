"""Settings of the ingest API (RAGTRACE_INGEST_*)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_INGEST_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8082
    max_body_bytes: int = 10 * 1024 * 1024
