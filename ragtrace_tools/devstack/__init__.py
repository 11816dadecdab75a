"""The local stack: real servers, the observability backends, vLLM (`make up LLM=vllm`) and ragtrace's own
services as supervised processes."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from ingest.settings import InboxSettings
from ragtrace_tools.devstack import llm
from ragtrace_tools.devstack.observability import Observability, ObservabilityPorts, ScrapeTargets
from ragtrace_tools.devstack.servers import REPO_ROOT, LocalServers, StackPorts, port_in_use
from ragtrace_tools.devstack.services import ServicePorts, Services
from ragtrace_tools.devstack.supervisor import Component, StartError, State, Status, Supervisor

__all__ = [
    "LocalStack",
    "ObservabilityPorts",
    "ServicePorts",
    "StackPorts",
    "StartError",
    "State",
    "Status",
    "default_state_dir",
    "observability_wanted",
]


def default_state_dir() -> Path:
    return Path(os.environ.get("RAGTRACE_STATE_DIR", REPO_ROOT / ".state"))


def observability_wanted(saved: bool | None = None) -> bool:
    """RAGTRACE_OBSERVABILITY=off starts the pipeline without the collector, Tempo, Loki and Prometheus; unset,
    what the state directory's last `up` chose (on by default)."""
    setting = os.environ.get("RAGTRACE_OBSERVABILITY", "").strip().lower()
    if setting:
        if setting not in ("on", "off"):
            raise ValueError(f"RAGTRACE_OBSERVABILITY={setting!r}: expected on or off")
        return setting == "on"
    return True if saved is None else saved


class LocalStack:
    """The stack in one state directory: the real servers, then ragtrace's services. Ports given here are
    remembered there (ports.json), so later `status` and `down` calls, which pass none, find the same ones."""

    def __init__(
        self,
        state_dir: Path | None = None,
        ports: StackPorts | None = None,
        service_ports: ServicePorts | None = None,
        with_services: bool = True,
        observability_ports: ObservabilityPorts | None = None,
    ) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.supervisor = Supervisor(self.state_dir)
        ports_file = self.state_dir / "ports.json"
        saved = json.loads(ports_file.read_text()) if ports_file.exists() else {}
        ports = ports or StackPorts(**saved.get("servers", {}))
        service_ports = service_ports or ServicePorts(**saved.get("services", {}))
        observability_ports = observability_ports or ObservabilityPorts(**saved.get("observability", {}))
        self.with_observability = with_services and observability_wanted(saved.get("with_observability"))
        self.with_llm = with_services and llm.wanted(saved.get("with_llm"))
        ports_file.parent.mkdir(parents=True, exist_ok=True)
        ports_file.write_text(
            json.dumps(
                {
                    "servers": asdict(ports),
                    "services": asdict(service_ports),
                    "observability": asdict(observability_ports),
                    "with_observability": self.with_observability,
                    "with_llm": self.with_llm,
                }
            )
        )
        self.servers = LocalServers(self.state_dir, ports)
        self.services = (
            Services(self.state_dir, service_ports, self._service_env(observability_ports)) if with_services else None
        )
        log_files = [str(self.supervisor.log_path(c.name)) for c in self.services.components()] if self.services else []
        self.observability = Observability(self.state_dir, observability_ports, log_files)
        self.vllm = llm.vllm_component(
            ports.vllm, observability_ports.otlp_grpc_endpoint if self.with_observability else None
        )

    def _service_env(self, observability: ObservabilityPorts) -> dict[str, str]:
        return {
            **self.servers.client_env(),
            "RAGTRACE_API_KEYS": json.dumps({self.servers.secrets.api_key: ["*"]}),
            **(
                {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": observability.otlp_endpoint,
                    "RAGTRACE_TRACE_QUERY_URL": observability.tempo_url,
                }
                if self.with_observability
                else {}
            ),
            **({"RAGTRACE_LLM_BASE_URL": f"http://127.0.0.1:{self.servers.ports.vllm}/v1"} if self.with_llm else {}),
        }

    @property
    def env_file(self) -> Path:
        return self.state_dir / "stack.env"

    def _observability(self) -> list[Component]:
        servers = self.servers.metrics_addresses()
        if self.with_llm:
            servers["vllm"] = f"127.0.0.1:{self.servers.ports.vllm}"
        targets = ScrapeTargets(services=(self.services.ports,) if self.services else (), servers=servers)
        return self.observability.components(targets)

    def components(self) -> list[Component]:
        """In start order: the servers, the observability backends (unless off), vLLM (when wanted), ragtrace's
        services."""
        observability = self._observability() if self.with_observability else []
        vllm = [self.vllm] if self.with_llm else []
        services = self.services.components() if self.services else []
        return self.servers.components() + observability + vllm + services

    def client_env(self) -> dict[str, str]:
        """What a client of this stack needs: the servers' settings, the services' URLs and the API key."""
        env = {**self.servers.client_env(), "RAGTRACE_API_KEY": self.servers.secrets.api_key}
        if self.services:
            env |= {
                "RAGTRACE_INGEST_URL": f"http://127.0.0.1:{self.services.ports.ingest}",
                "RAGTRACE_SEARCH_URL": f"http://127.0.0.1:{self.services.ports.gateway}",
            }
        if self.with_observability:
            env |= self.observability.client_env()
        return env

    def endpoints(self) -> list[tuple[str, str]]:
        """(what, where) for a person: every address `make up` serves."""
        p = self.servers.ports
        listed = [
            ("Kafka bootstrap", f"127.0.0.1:{p.kafka}"),
            ("MinIO API / console", f"http://127.0.0.1:{p.minio}  /  http://127.0.0.1:{p.minio_console}"),
            ("Redis", f"redis://127.0.0.1:{p.redis}"),
            (
                "Kafka / Redis metrics",
                f"http://127.0.0.1:{p.kafka_metrics}/metrics  /  http://127.0.0.1:{p.redis_exporter}/metrics",
            ),
            ("Weaviate", f"http://127.0.0.1:{p.weaviate_http} (gRPC {p.weaviate_grpc})"),
        ]
        if self.services:
            s = self.services.ports
            listed += [
                ("Ingest API", f"http://127.0.0.1:{s.ingest}  (POST /ingest, OpenAPI at /docs)"),
                ("Search page and API", f"http://127.0.0.1:{s.gateway}  (POST /api/search, /api/search/stream)"),
                (
                    "Worker metrics",
                    f"http://127.0.0.1:{s.embedding_metrics}/metrics, http://127.0.0.1:{s.indexer_metrics}/metrics, "
                    f"http://127.0.0.1:{s.inbox_metrics}/metrics",
                ),
                ("Watched bucket (inbox)", f"{InboxSettings().bucket}: <namespace>/<path> objects become documents"),
            ]
        if self.with_observability:
            o = self.observability
            listed += [
                ("OTLP (collector)", f"{o.otlp_endpoint} (HTTP), 127.0.0.1:{o.ports.otlp_grpc} (gRPC)"),
                ("Tempo (traces, TraceQL)", f"{o.tempo_url}  (/api/traces/<id>, /api/search?q=<TraceQL>)"),
                ("Loki (logs, LogQL)", f"{o.loki_url}  (/loki/api/v1/query_range?query=<LogQL>)"),
                ("Prometheus UI", f"{o.prometheus_url}  (/targets, /rules, /graph)"),
            ]
        if self.with_llm:
            listed.append(("vLLM (OpenAI API)", f"http://127.0.0.1:{p.vllm}/v1  (/metrics)"))
        return listed

    def up(self) -> list[Status]:
        """Start every component not yet running, in order, each once ready; idempotent."""
        self._write_env_file()
        for component in self.components():
            if self.supervisor.pid(component.name) is None and port_in_use(component.port):
                raise StartError(
                    f"{component.name}: port {component.port} is already in use by a process this stack did not "
                    f"start; stop it or choose another port"
                )
            self.supervisor.start(component)
        return self.status()

    def down(self) -> list[str]:
        """Stop what this stack started, in reverse order; returns the names that were running. The
        observability backends and vLLM are stopped whatever RAGTRACE_OBSERVABILITY and RAGTRACE_LLM say now."""
        every = self.components()
        if self.services and not self.with_observability:
            every += self._observability()
        if self.services and not self.with_llm:
            every.append(self.vllm)
        return [c.name for c in reversed(every) if self.supervisor.stop(c)]

    def status(self) -> list[Status]:
        return [self.supervisor.status(c) for c in self.components()]

    def _write_env_file(self) -> None:
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        self.env_file.touch(mode=0o600)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.client_env().items()))
