from __future__ import annotations

from collections.abc import Iterator

import pytest

from embedding.engine import EmbeddingEngine
from embedding.settings import EmbeddingSettings
from ragtrace.devstack.servers import free_port
from ragtrace.devstack.services import ServicePorts, Services
from ragtrace.devstack.supervisor import Supervisor
from ragtrace.vectorstore import Backend
from tests.infra import Infra, provide_infra
from tests.pipeline import Pipeline, start_pipeline


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """Real Kafka, MinIO, Redis and Weaviate for the whole session (see tests/infra.py for where from)."""
    with provide_infra(tmp_path_factory.mktemp("stack")) as servers:
        yield servers


@pytest.fixture(scope="session")
def trace_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The project's OTLP trace store, as its own process; every pipeline exports to it."""
    state = tmp_path_factory.mktemp("traces")
    services = Services(state, ServicePorts(trace_store=free_port()), {})
    supervisor = Supervisor(state)
    supervisor.start(services.trace_store())
    yield services
    supervisor.stop(services.trace_store())


def _pipeline(
    infra: Infra, trace_store: Services, tmp_path_factory: pytest.TempPathFactory, backend: Backend
) -> Iterator[Pipeline]:
    with start_pipeline(
        infra, tmp_path_factory.mktemp(backend.value), backend, trace_store.ports.trace_store
    ) as pipeline:
        yield pipeline


@pytest.fixture(scope="session")
def faiss_pipeline(infra: Infra, trace_store: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    yield from _pipeline(infra, trace_store, tmp_path_factory, Backend.FAISS)


@pytest.fixture(scope="session")
def weaviate_pipeline(
    infra: Infra, trace_store: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    yield from _pipeline(infra, trace_store, tmp_path_factory, Backend.WEAVIATE)


@pytest.fixture(params=[Backend.FAISS, Backend.WEAVIATE], ids=lambda b: b.value)
def pipeline(request: pytest.FixtureRequest) -> Pipeline:
    """Each backend's pipeline in turn."""
    fixture: Pipeline = request.getfixturevalue(f"{request.param.value}_pipeline")
    return fixture


@pytest.fixture(scope="session")
def engine() -> EmbeddingEngine:
    """The embedding model in the test process, to embed queries."""
    return EmbeddingEngine(EmbeddingSettings())
