"""`make up LLM=vllm`: the local stack's vLLM component, its arguments and what points at it (no server runs
here; tests/integration/test_vllm.py runs the real one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ragtrace_tools.cli import app
from ragtrace_tools.devstack import LocalStack, ObservabilityPorts, ServicePorts, StackPorts, smollm2, tiny_llm
from ragtrace_tools.devstack.llm import KIND_VLLM, VLLMNotInstalled, vllm_component
from ragtrace_tools.devstack.servers import kind_statefulset_args


def _stack(state: Path) -> LocalStack:
    return LocalStack(state, StackPorts.free(), ServicePorts.free(), observability_ports=ObservabilityPorts.free())


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(arg.partition("=")[::2] for arg in argv if arg.startswith("--"))


def test_llm_vllm_starts_vllm_before_the_services_and_points_search_and_prometheus_at_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGTRACE_LLM", "vllm")
    monkeypatch.delenv("RAGTRACE_LLM_LOCAL_MODEL", raising=False)
    stack = _stack(tmp_path)
    names = [c.name for c in stack.components()]
    assert names.index("prometheus") < names.index("vllm") < names.index("ingest-api")
    port = stack.servers.ports.vllm
    search = next(c for c in stack.components() if c.name == "search-service")
    assert search.env["RAGTRACE_LLM_BASE_URL"] == f"http://127.0.0.1:{port}/v1"
    assert search.env["RAGTRACE_LLM_MODEL"] == str(smollm2.model_dir()), "the model it asks for, named"

    prometheus = next(c for c in stack.components() if c.name == "prometheus")
    assert prometheus.prepare is not None
    prometheus.prepare()
    config = yaml.safe_load((tmp_path / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs["vllm"] == [f"127.0.0.1:{port}"], "the Kind job's name, scraping the local vLLM"

    flags = _flags(stack.vllm.argv)
    assert flags["--model"] == str(smollm2.model_dir()) and flags["--port"] == str(port), "SmolLM2 by default"
    assert flags["--otlp-traces-endpoint"] == f"http://127.0.0.1:{stack.observability.ports.otlp_grpc}"
    kind = _flags(kind_statefulset_args(KIND_VLLM))
    assert flags["--max-model-len"] == kind["--max-model-len"], "the overlay's args where they apply"
    assert "--gpu-memory-utilization" not in flags and flags["--dtype"] == "bfloat16"

    monkeypatch.delenv("RAGTRACE_LLM")
    assert "vllm" in [c.name for c in _stack(tmp_path).components()], "status and down follow the last up"


def test_without_observability_vllm_exports_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTRACE_LLM", "vllm")
    monkeypatch.setenv("RAGTRACE_OBSERVABILITY", "off")
    assert "--otlp-traces-endpoint" not in _flags(_stack(tmp_path).vllm.argv)


def test_by_default_no_vllm_and_answers_stay_extractive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGTRACE_LLM", raising=False)
    stack = _stack(tmp_path)
    assert "vllm" not in [c.name for c in stack.components()]
    assert all("RAGTRACE_LLM_BASE_URL" not in c.env for c in stack.components())
    monkeypatch.setenv("RAGTRACE_LLM", "openai")
    with pytest.raises(ValueError, match="RAGTRACE_LLM='openai': expected vllm or none"):
        _stack(tmp_path)


def test_the_tiny_model_is_a_setting_and_switching_models_restarts_vllm_and_the_search_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search service that kept the model it learned would look answers up under a model vLLM no longer serves:
    the stack names the model to it, so a change of model restarts both."""
    monkeypatch.setenv("RAGTRACE_LLM", "vllm")
    ports = (StackPorts.free(), ServicePorts.free(), ObservabilityPorts.free())

    def fingerprints(model: str) -> dict[str, dict[str, str]]:
        monkeypatch.setenv("RAGTRACE_LLM_LOCAL_MODEL", model)
        stack = LocalStack(tmp_path, ports[0], ports[1], observability_ports=ports[2])
        return {c.name: c.fingerprint() for c in stack.components()}

    monkeypatch.setenv("RAGTRACE_LLM_LOCAL_MODEL", "tiny")
    assert _flags(_stack(tmp_path).vllm.argv)["--model"] == str(tiny_llm.model_dir())
    tiny, smol = fingerprints("tiny"), fingerprints("smollm2")
    assert {name for name in tiny if tiny[name] != smol[name]} == {"vllm", "search-service"}
    search_tiny, search_smol = tiny["search-service"], smol["search-service"]
    assert {name for name in search_smol if search_tiny[name] != search_smol[name]} == {"RAGTRACE_LLM_MODEL"}


def test_make_up_installs_what_its_stack_runs_and_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGTRACE_LLM", raising=False)
    monkeypatch.delenv("RAGTRACE_INDEX_BACKEND", raising=False)

    def installs() -> set[str]:
        return {name for component in _stack(tmp_path).components() for name in component.installs}

    servers = {"kafka", "minio", "redis", "redis-exporter"}
    observability = {"otelcol", "tempo", "loki", "prometheus"}
    assert installs() == servers | observability, "no Weaviate, vLLM, Kubernetes, kwok, kustomize or Chromium"
    monkeypatch.setenv("RAGTRACE_LLM", "vllm")
    assert installs() == servers | observability | {"vllm"}
    monkeypatch.setenv("RAGTRACE_LLM", "none")
    monkeypatch.setenv("RAGTRACE_INDEX_BACKEND", "weaviate")
    assert installs() == servers | observability | {"weaviate"}
    monkeypatch.setenv("RAGTRACE_OBSERVABILITY", "off")
    assert installs() == servers | {"weaviate"}


def test_a_model_of_ones_own_is_served_by_name_or_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTRACE_LLM", "vllm")
    monkeypatch.setenv("RAGTRACE_LLM_LOCAL_MODEL", "Qwen/Qwen2.5-1.5B-Instruct")
    assert _flags(_stack(tmp_path).vllm.argv)["--model"] == "Qwen/Qwen2.5-1.5B-Instruct"


def test_without_make_install_vllm_fails_to_start_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTRACE_CACHE_DIR", str(tmp_path))
    component = vllm_component(8000, None)
    assert component.prepare is not None
    with pytest.raises(VLLMNotInstalled, match=r"vLLM is not installed .*run `make install`"):
        component.prepare()


def test_without_its_gguf_smollm2_is_not_made_and_the_fix_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGTRACE_CACHE_DIR", str(tmp_path))
    with pytest.raises(smollm2.GGUFMissing, match=r"run `infra/local/install.sh smollm2`"):
        smollm2.make(tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_llm_model_makes_only_the_models_made_here() -> None:
    result = CliRunner().invoke(app, ["llm-model", "Qwen/Qwen2.5-1.5B-Instruct"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "the models made here are smollm2, tiny" in result.output
