"""ragtrace's own processes as supervised components: the trace store, the ingest API, and the embedding and
indexer workers.

They take the servers' client settings (`LocalServers.client_env()`, or the test fixture's) and run with
the same Python as the caller, so `make up` and the tests start exactly the code in this checkout.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from ragtrace.devstack.supervisor import Component


@dataclass(frozen=True)
class ServicePorts:
    trace_store: int = 4318
    ingest: int = 8082
    embedding_metrics: int = 9464
    indexer_metrics: int = 9465


def _answers(url: str) -> bool:
    return httpx.get(url, timeout=1).status_code == 200


class Services:
    def __init__(self, state_dir: Path, ports: ServicePorts, env: dict[str, str]) -> None:
        self.state_dir = state_dir
        self.ports = ports
        self.env = {
            "RAGTRACE_INDEX_DATA_DIR": str(state_dir / "index"),
            "PYTHONUNBUFFERED": "1",
            # Every process exports its spans to the trace store, promptly.
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.trace_url,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            **env,
        }

    @property
    def trace_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.trace_store}"

    def _python(self, name: str, module: str, port: int, ready_path: str, extra: dict[str, str]) -> Component:
        return Component(
            name=name,
            port=port,
            argv=[sys.executable, "-m", module],
            env={**self.env, "OTEL_SERVICE_NAME": name, **extra},
            ready=lambda: _answers(f"http://127.0.0.1:{port}{ready_path}"),
            start_timeout_s=120,  # the workers load torch and the model first
        )

    def trace_store(self) -> Component:
        return self._python(
            "trace-store",
            "ragtrace.tracestore",
            self.ports.trace_store,
            "/healthz",
            {
                "RAGTRACE_TRACESTORE_PORT": str(self.ports.trace_store),
                "RAGTRACE_TRACESTORE_PATH": str(self.state_dir / "traces.sqlite"),
                "OTEL_EXPORTER_OTLP_ENDPOINT": "",  # the store does not trace itself
            },
        )

    def ingest_api(self) -> Component:
        return self._python(
            "ingest-api", "ingest.app", self.ports.ingest, "/readyz", {"RAGTRACE_INGEST_PORT": str(self.ports.ingest)}
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

    def components(self) -> list[Component]:
        return [self.trace_store(), self.ingest_api(), self.embedding_worker(), self.indexer_worker()]
