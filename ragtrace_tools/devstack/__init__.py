"""The local stack: real servers (and, from later issues, ragtrace's own services) as supervised processes."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from ragtrace_tools.devstack.servers import REPO_ROOT, LocalServers, StackPorts, port_in_use
from ragtrace_tools.devstack.services import ServicePorts, Services
from ragtrace_tools.devstack.supervisor import Component, StartError, State, Status, Supervisor

__all__ = ["LocalStack", "ServicePorts", "StackPorts", "StartError", "State", "Status", "default_state_dir"]


def default_state_dir() -> Path:
    return Path(os.environ.get("RAGTRACE_STATE_DIR", REPO_ROOT / ".state"))


class LocalStack:
    """The stack in one state directory: the real servers, then ragtrace's services. Ports given here are
    remembered there (ports.json), so later `status` and `down` calls, which pass none, find the same ones."""

    def __init__(
        self,
        state_dir: Path | None = None,
        ports: StackPorts | None = None,
        service_ports: ServicePorts | None = None,
        with_services: bool = True,
    ) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.supervisor = Supervisor(self.state_dir)
        ports_file = self.state_dir / "ports.json"
        saved = json.loads(ports_file.read_text()) if ports_file.exists() else {}
        ports = ports or StackPorts(**saved.get("servers", {}))
        service_ports = service_ports or ServicePorts(**saved.get("services", {}))
        ports_file.parent.mkdir(parents=True, exist_ok=True)
        ports_file.write_text(json.dumps({"servers": asdict(ports), "services": asdict(service_ports)}))
        self.servers = LocalServers(self.state_dir, ports)
        self.services = Services(self.state_dir, service_ports, self._service_env()) if with_services else None

    def _service_env(self) -> dict[str, str]:
        return {
            **self.servers.client_env(),
            "RAGTRACE_API_KEYS": json.dumps({self.servers.secrets.api_key: ["*"]}),
        }

    @property
    def env_file(self) -> Path:
        return self.state_dir / "stack.env"

    def components(self) -> list[Component]:
        services = self.services.components() if self.services else []
        return self.servers.components() + services

    def client_env(self) -> dict[str, str]:
        """What a client of this stack needs: the servers' settings, the services' URLs and the API key."""
        env = {**self.servers.client_env(), "RAGTRACE_API_KEY": self.servers.secrets.api_key}
        if self.services:
            env |= {
                "RAGTRACE_INGEST_URL": f"http://127.0.0.1:{self.services.ports.ingest}",
                "RAGTRACE_SEARCH_URL": f"http://127.0.0.1:{self.services.ports.gateway}",
                "RAGTRACE_TRACE_QUERY_URL": self.services.trace_url,
            }
        return env

    def endpoints(self) -> list[tuple[str, str]]:
        """(what, where) for a person: every address `make up` serves."""
        p = self.servers.ports
        listed = [
            ("Kafka bootstrap", f"127.0.0.1:{p.kafka}"),
            ("MinIO API / console", f"http://127.0.0.1:{p.minio}  /  http://127.0.0.1:{p.minio_console}"),
            ("Redis", f"redis://127.0.0.1:{p.redis}"),
            ("Weaviate", f"http://127.0.0.1:{p.weaviate_http} (gRPC {p.weaviate_grpc})"),
        ]
        if self.services:
            s = self.services.ports
            listed += [
                ("Ingest API", f"http://127.0.0.1:{s.ingest}  (POST /ingest, OpenAPI at /docs)"),
                ("Search page and API", f"http://127.0.0.1:{s.gateway}  (POST /api/search, /api/search/stream)"),
                ("Trace store (OTLP + query)", self.services.trace_url),
                (
                    "Worker metrics",
                    f"http://127.0.0.1:{s.embedding_metrics}/metrics, http://127.0.0.1:{s.indexer_metrics}/metrics",
                ),
            ]
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
        """Stop what this stack started, in reverse order; returns the names that were running."""
        return [c.name for c in reversed(self.components()) if self.supervisor.stop(c)]

    def status(self) -> list[Status]:
        return [self.supervisor.status(c) for c in self.components()]

    def _write_env_file(self) -> None:
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        self.env_file.touch(mode=0o600)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.client_env().items()))
