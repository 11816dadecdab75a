"""ragtrace's own processes as supervised components: the ingest API, the inbox worker (bucket events), the
embedding and indexer workers, the embedding service, the search service and the search gateway.

They take the servers' client settings (`LocalServers.client_env()`, or the test fixture's) and run with
the same Python as the caller, so `make up` and the tests start exactly the code in this checkout. With
OTEL_EXPORTER_OTLP_ENDPOINT in that environment (the collector's, see observability.py) they export their spans.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragtrace_tools.devstack.servers import with_free_ports
from ragtrace_tools.devstack.supervisor import Component


@dataclass(frozen=True)
class ServicePorts:
    ingest: int = 8082
    inbox_metrics: int = 9468
    embedding_metrics: int = 9464
    indexer_metrics: int = 9465
    embedding_grpc: int = 50062
    embedding_service_metrics: int = 9467
    search_grpc: int = 50061
    search_metrics: int = 9466
    gateway: int = 8080

    @classmethod
    def free(cls) -> ServicePorts:
        return with_free_ports(cls)


def _answers(url: str) -> bool:
    return httpx.get(url, timeout=1).status_code == 200


def _serving(port: int) -> bool:
    """The gRPC health checking protocol says SERVING."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class Services:
    """`env` reaches every process; `llm_env` (RAGTRACE_LLM_*) the search service alone, the one that answers
    with an LLM: a change of LLM restarts it and nothing else."""

    def __init__(
        self, state_dir: Path, ports: ServicePorts, env: dict[str, str], llm_env: dict[str, str] | None = None
    ) -> None:
        self.state_dir = state_dir
        self.ports = ports
        self.llm_env = llm_env or {}
        self.env = {
            "RAGTRACE_INDEX_DATA_DIR": str(state_dir / "index"),
            "PYTHONUNBUFFERED": "1",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # spans leave promptly (when an OTLP endpoint is set)
            **env,
        }

    def _python(self, name: str, module: str, port: int, ready_path: str | None, extra: dict[str, str]) -> Component:
        """A ragtrace process; ready when `ready_path` answers 200 over HTTP, or, without one, when it serves
        the gRPC health protocol."""
        return Component(
            name=name,
            port=port,
            argv=[sys.executable, "-m", module],
            env={**self.env, "OTEL_SERVICE_NAME": name, **extra},
            ready=(lambda: _answers(f"http://127.0.0.1:{port}{ready_path}")) if ready_path else lambda: _serving(port),
            start_timeout_s=120,  # the embedding processes load torch and the model first
        )

    def ingest_api(self) -> Component:
        return self._python(
            "ingest-api", "ingest.app", self.ports.ingest, "/readyz", {"RAGTRACE_INGEST_PORT": str(self.ports.ingest)}
        )

    def inbox_worker(self) -> Component:
        return self._python(
            "inbox-worker",
            "ingest.inbox",
            self.ports.inbox_metrics,
            "/metrics",
            {"RAGTRACE_INBOX_METRICS_PORT": str(self.ports.inbox_metrics)},
        )

    def embedding_worker(self) -> Component:
        return self._python(
            "embedding-worker",
            "embedding.worker",
            self.ports.embedding_metrics,
            "/metrics",
            {"RAGTRACE_EMBEDDING_METRICS_PORT": str(self.ports.embedding_metrics)},
        )

    def indexer_worker(self) -> Component:
        return self._python(
            "indexer-worker",
            "indexer.worker",
            self.ports.indexer_metrics,
            "/metrics",
            {"RAGTRACE_INDEXER_METRICS_PORT": str(self.ports.indexer_metrics)},
        )

    def embedding_service(self) -> Component:
        return self._python(
            "embedding-service",
            "embedding.server",
            self.ports.embedding_grpc,
            None,
            {
                "RAGTRACE_EMBEDDING_GRPC_PORT": str(self.ports.embedding_grpc),
                "RAGTRACE_EMBEDDING_SERVICE_METRICS_PORT": str(self.ports.embedding_service_metrics),
            },
        )

    def search_service(self) -> Component:
        return self._python(
            "search-service",
            "query.server",
            self.ports.search_grpc,
            None,
            {
                "RAGTRACE_SEARCH_PORT": str(self.ports.search_grpc),
                "RAGTRACE_SEARCH_METRICS_PORT": str(self.ports.search_metrics),
                "RAGTRACE_SEARCH_EMBEDDING_TARGET": f"127.0.0.1:{self.ports.embedding_grpc}",
                **self.llm_env,
            },
        )

    def gateway(self) -> Component:
        return self._python(
            "search-gateway",
            "query.app",
            self.ports.gateway,
            "/readyz",
            {
                "RAGTRACE_GATEWAY_PORT": str(self.ports.gateway),
                "RAGTRACE_GATEWAY_SEARCH_TARGET": f"127.0.0.1:{self.ports.search_grpc}",
                "RAGTRACE_GATEWAY_INGEST_URL": f"http://127.0.0.1:{self.ports.ingest}",
            },
        )

    def ingestion(self) -> list[Component]:
        return [self.ingest_api(), self.inbox_worker(), self.embedding_worker(), self.indexer_worker()]

    def query(self) -> list[Component]:
        return [self.embedding_service(), self.search_service(), self.gateway()]

    def components(self) -> list[Component]:
        return [*self.ingestion(), *self.query()]
