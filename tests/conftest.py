from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest

from ragtrace.vectorstore import Backend
from ragtrace_tools.devstack.observability import Observability, ObservabilityPorts, ScrapeTargets
from ragtrace_tools.devstack.servers import free_port
from ragtrace_tools.devstack.services import ServicePorts, Services
from ragtrace_tools.devstack.supervisor import Component, Supervisor
from tests.infra import Infra, provide_infra
from tests.pipeline import LLM_API_KEY, Pipeline, start_pipeline

if TYPE_CHECKING:
    from embedding.engine import EmbeddingEngine


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """Real Kafka, MinIO, Redis and Weaviate for the whole session (see tests/infra.py for where from)."""
    with provide_infra(tmp_path_factory.mktemp("stack")) as servers:
        yield servers


@pytest.fixture(scope="session")
def observability(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observability]:
    """The real Tempo, Loki and OpenTelemetry Collector, once for the session (free ports, a temporary state
    directory): every pipeline exports its spans to the collector, and the collector ships the log files of
    every pipeline's processes to Loki."""
    state = tmp_path_factory.mktemp("observability")
    names = [c.name for c in Services(state, ServicePorts(), {}).components()]
    logs = [str(tmp_path_factory.getbasetemp() / "*" / "logs" / f"{name}.log") for name in names]
    stack = Observability(state, ObservabilityPorts.free(), logs)
    supervisor = Supervisor(state)
    with supervisor.running(stack.backends(), together=True), supervisor.running([stack.collector()]):
        yield stack


@pytest.fixture(scope="session")
def prometheus(observability: Observability, faiss_pipeline: Pipeline, infra: Infra) -> Iterator[str]:
    """Prometheus with monitoring/'s config and rules, scraping the FAISS pipeline's processes, the servers'
    metrics endpoints (Kafka's JMX exporter agent, MinIO, the Redis exporter) and the collector; its URL.
    Servers the tests did not start themselves (env, docker) offer MinIO's endpoint alone."""
    servers = (
        infra.stack.servers.metrics_addresses() if infra.stack else {"minio": infra.env["RAGTRACE_MINIO_ENDPOINT"]}
    )
    targets = ScrapeTargets((faiss_pipeline.services.ports,), servers)
    with Supervisor(observability.state_dir).running([observability.prometheus(targets)]):
        yield observability.prometheus_url


@dataclass(frozen=True)
class LLMServer:
    component: Component
    supervisor: Supervisor

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.component.port}/v1"

    def completions(self) -> int:
        return int(httpx.get(f"http://127.0.0.1:{self.component.port}/stats").json()["chat_completions"])


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServer]:
    """The OpenAI-compatible test LLM (tests/llm_server.py): a real HTTP server in its own process."""
    port = free_port()
    component = Component(
        name="llm-server",
        port=port,
        argv=[sys.executable, "-m", "tests.llm_server"],
        env={"LLM_SERVER_PORT": str(port), "LLM_SERVER_API_KEY": LLM_API_KEY},
        ready=lambda: httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1).status_code == 200,
    )
    server = LLMServer(component, Supervisor(tmp_path_factory.mktemp("llm")))
    server.supervisor.start(component)
    yield server
    server.supervisor.stop(component)


def _pipeline(request: pytest.FixtureRequest, backend: Backend) -> Iterator[Pipeline]:
    infra: Infra = request.getfixturevalue("infra")
    observability: Observability = request.getfixturevalue("observability")
    llm: LLMServer = request.getfixturevalue("llm_server")
    state = request.getfixturevalue("tmp_path_factory").mktemp(backend.value)
    with start_pipeline(infra, state, backend, observability.ports, llm.url) as pipeline:
        yield pipeline


@pytest.fixture(scope="session")
def faiss_pipeline(request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    yield from _pipeline(request, Backend.FAISS)


@pytest.fixture(scope="session")
def weaviate_pipeline(request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    yield from _pipeline(request, Backend.WEAVIATE)


@pytest.fixture(params=[Backend.FAISS, Backend.WEAVIATE], ids=lambda b: b.value)
def pipeline(request: pytest.FixtureRequest) -> Pipeline:
    """Each backend's pipeline in turn."""
    fixture: Pipeline = request.getfixturevalue(f"{request.param.value}_pipeline")
    return fixture


@pytest.fixture(scope="session")
def engine() -> EmbeddingEngine:
    """The embedding model in the test process, to embed queries (torch imported only when a test asks)."""
    from embedding.engine import EmbeddingEngine
    from embedding.settings import EmbeddingSettings

    return EmbeddingEngine(EmbeddingSettings())
