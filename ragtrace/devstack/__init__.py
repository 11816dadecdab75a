"""The local stack: real servers (and, from later issues, ragtrace's own services) as supervised processes."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from ragtrace.devstack.servers import REPO_ROOT, LocalServers, StackPorts, port_in_use
from ragtrace.devstack.supervisor import Component, StartError, State, Status, Supervisor

__all__ = ["LocalStack", "StackPorts", "StartError", "State", "Status", "default_state_dir"]


def default_state_dir() -> Path:
    return Path(os.environ.get("RAGTRACE_STATE_DIR", REPO_ROOT / ".state"))


class LocalStack:
    """The stack in one state directory. Ports given here are remembered there (ports.json), so later
    `status` and `down` calls, which pass none, probe and stop the same servers."""

    def __init__(self, state_dir: Path | None = None, ports: StackPorts | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.supervisor = Supervisor(self.state_dir)
        ports_file = self.state_dir / "ports.json"
        if ports is None:
            ports = StackPorts(**json.loads(ports_file.read_text())) if ports_file.exists() else StackPorts()
        else:
            ports_file.parent.mkdir(parents=True, exist_ok=True)
            ports_file.write_text(json.dumps(asdict(ports)))
        self.servers = LocalServers(self.state_dir, ports)

    @property
    def env_file(self) -> Path:
        return self.state_dir / "stack.env"

    def components(self) -> list[Component]:
        return self.servers.components()

    def client_env(self) -> dict[str, str]:
        return self.servers.client_env()

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
