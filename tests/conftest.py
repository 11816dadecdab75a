from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest

from ragtrace.vectorstore import Backend
from ragtrace_tools.devstack.llm import local_model, vllm_component
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
def prometheus(observability: Observability, faiss_pipeline: Pipeline, infra: Infra, vllm: VLLM) -> Iterator[str]:
    """Prometheus with monitoring/'s config and rules, scraping the FAISS pipeline's processes, the servers'
    metrics endpoints (Kafka's JMX exporter agent, MinIO, the Redis exporter), the collector and the session's
    vLLM; its URL. Servers the tests did not start themselves (env, docker) offer MinIO's endpoint alone."""
    servers = (
        infra.stack.servers.metrics_addresses() if infra.stack else {"minio": infra.env["RAGTRACE_MINIO_ENDPOINT"]}
    )
    targets = ScrapeTargets((faiss_pipeline.services.ports,), servers | {"vllm": f"127.0.0.1:{vllm.component.port}"})
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


@contextlib.contextmanager
def _running_llm_server(tmp_path_factory: pytest.TempPathFactory, name: str, **env: str) -> Iterator[LLMServer]:
    port = free_port()
    component = Component(
        name=name,
        port=port,
        argv=[sys.executable, "-m", "tests.llm_server"],
        env={"LLM_SERVER_PORT": str(port), "LLM_SERVER_API_KEY": LLM_API_KEY, **env},
        ready=lambda: httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1).status_code == 200,
    )
    supervisor = Supervisor(tmp_path_factory.mktemp(name))
    with supervisor.running([component]):
        yield LLMServer(component, supervisor)


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServer]:
    """The OpenAI-compatible test LLM (tests/llm_server.py): a real HTTP server in its own process."""
    with _running_llm_server(tmp_path_factory, "llm-server") as server:
        yield server


SLOW_LLM_SECONDS_PER_TOKEN = 0.1


@pytest.fixture(scope="session")
def slow_llm_search(tmp_path_factory: pytest.TempPathFactory, faiss_pipeline: Pipeline) -> Iterator[Services]:
    """A search service and gateway over the FAISS pipeline's index whose LLM is the test LLM streaming one token
    every SLOW_LLM_SECONDS_PER_TOKEN: an answer of 50 words is still streaming for about 5 s, long enough for
    a second search to start while the first one's answer is under way."""
    pace = {"LLM_SERVER_SECONDS_PER_TOKEN": str(SLOW_LLM_SECONDS_PER_TOKEN)}
    with _running_llm_server(tmp_path_factory, "slow-llm-server", **pace) as llm:
        state = tmp_path_factory.mktemp("slow-llm-search")
        shared = faiss_pipeline.services.ports
        services = Services(
            state,
            dataclasses.replace(ServicePorts.free(), embedding_grpc=shared.embedding_grpc),
            {**faiss_pipeline.env, "RAGTRACE_LLM_BASE_URL": llm.url},
        )
        with Supervisor(state).running([services.search_service(), services.gateway()]):
            yield services


@dataclass(frozen=True)
class VLLM:
    component: Component
    model: str  # the name it serves the model under: the model's directory

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.component.port}/v1"

    def metrics(self) -> str:
        response = httpx.get(f"http://127.0.0.1:{self.component.port}/metrics", timeout=10)
        response.raise_for_status()
        return response.text


@pytest.fixture(scope="session", autouse=True)
def vllm_starting(request: pytest.FixtureRequest) -> Iterator[Future[VLLM] | None]:
    """Real vLLM (infra/local/install.sh vllm) serving the model `make up LLM=vllm` serves (SmolLM2 unless
    RAGTRACE_LLM_LOCAL_MODEL says `tiny`, which is enough for what needs only the protocol) with the local stack's
    arguments, its spans going to the session's collector: started once, at the beginning of a session that has a
    test using it, in the background. It takes about 90 s on a busy machine (mostly importing torch and vLLM), so
    it loads while the other servers start and the first tests run."""
    if not any("vllm" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    observability: Observability = request.getfixturevalue("observability")
    model = local_model()
    component = vllm_component(free_port(), observability.ports.otlp_grpc_endpoint, model)
    supervisor = Supervisor(request.getfixturevalue("tmp_path_factory").mktemp("vllm"))

    def start() -> VLLM:
        supervisor.start(component)
        return VLLM(component, model)

    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(start)
        try:
            yield started
        finally:
            started.exception()  # a start still under way ends (ready, failed or timed out) before the stop
            supervisor.stop(component)


@pytest.fixture(scope="session")
def vllm(vllm_starting: Future[VLLM] | None) -> VLLM:
    """The session's vLLM once it is ready; without `make install`, the error naming it."""
    assert vllm_starting is not None, "vllm_starting starts vLLM for every session whose tests use it"
    return vllm_starting.result()


def vllm_llm_settings(vllm: VLLM) -> dict[str, str]:
    """The search service's LLM settings for the session's vLLM (temperature 0: greedy, the same answer each run)."""
    return {"RAGTRACE_LLM_BASE_URL": vllm.url, "RAGTRACE_LLM_MODEL": vllm.model, "RAGTRACE_LLM_TEMPERATURE": "0"}


@pytest.fixture(scope="session")
def vllm_search(tmp_path_factory: pytest.TempPathFactory, faiss_pipeline: Pipeline, vllm: VLLM) -> Iterator[Services]:
    """A search service and gateway whose LLM is vLLM, configured as `make up LLM=vllm` configures it (its URL and
    model), over the FAISS pipeline's index and embedding service: documents go in through that pipeline,
    questions come out here."""
    state = tmp_path_factory.mktemp("vllm-search")
    shared = faiss_pipeline.services.ports
    services = Services(
        state,
        dataclasses.replace(ServicePorts.free(), embedding_grpc=shared.embedding_grpc),
        {**faiss_pipeline.env, **vllm_llm_settings(vllm)},
    )
    with Supervisor(state).running([services.search_service(), services.gateway()]):
        yield services


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
