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
