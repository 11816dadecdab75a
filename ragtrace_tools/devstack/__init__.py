"""The local stack: real servers, the observability backends, vLLM (`make up LLM=vllm`) and ragtrace's own
services as supervised processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict
from pathlib import Path

from ingest.settings import InboxSettings
from ragtrace.vectorstore import Backend, VectorStoreSettings
from ragtrace_tools.devstack import llm
from ragtrace_tools.devstack.install import install
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


# The stack's own switches: they decide what the components are started with and configure none of them.
STACK_SWITCHES = frozenset(
    {"RAGTRACE_LLM", "RAGTRACE_LLM_LOCAL_MODEL", "RAGTRACE_OBSERVABILITY", "RAGTRACE_STATE_DIR", "RAGTRACE_CACHE_DIR"}
)
SHELL_SETTINGS = ("RAGTRACE_", "OTEL_")  # the settings ragtrace's processes read from their environment
LLM_SETTINGS = "RAGTRACE_LLM_"  # the search service's alone
API_KEY = "RAGTRACE_API_KEY"
INSTALLER = "install-later"  # the background `make up` process that installs and starts the deferred components


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
        # Weaviate runs for the Weaviate backend, and for the tests' servers (with_services off), which use both.
        self.with_weaviate = not with_services or VectorStoreSettings().backend is Backend.WEAVIATE
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
        names = [c.name for c in Services(self.state_dir, service_ports, {}).components()] if with_services else []
        self.observability = Observability(
            self.state_dir, observability_ports, [str(self.supervisor.log_path(name)) for name in names]
        )
        if with_services:
            shell = self._shell_settings(service_ports)
            llm_env = {k: v for k, v in shell.items() if k.startswith(LLM_SETTINGS)}
            if self.with_llm:
                # The model named, not learned from the server: a change of model restarts the search service,
                # and no answer is looked up under a model vLLM no longer serves.
                llm_env["RAGTRACE_LLM_BASE_URL"] = f"http://127.0.0.1:{ports.vllm}/v1"
                llm_env["RAGTRACE_LLM_MODEL"] = llm.local_model()
            shared = {k: v for k, v in shell.items() if k not in llm_env} | self._service_env()
            self.services: Services | None = Services(self.state_dir, service_ports, shared, llm_env)
        else:
            self.services = None
        self.vllm = llm.vllm_component(
            ports.vllm, observability_ports.otlp_grpc_endpoint if self.with_observability else None
        )

    def _service_env(self) -> dict[str, str]:
        observability = self.observability
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
        }

    def _shell_settings(self, service_ports: ServicePorts) -> dict[str, str]:
        """The settings in the environment of `make up` (RAGTRACE_*, OTEL_*), given to ragtrace's processes
        explicitly, so that changing one restarts them; less the stack's switches and what it writes to
        stack.env (a shell that sourced that file carries them back)."""
        written = {
            API_KEY,
            *self.servers.client_env(),
            *self.observability.client_env(),
            *self._service_urls(service_ports),
        }
        return {
            name: value
            for name, value in os.environ.items()
            if name.startswith(SHELL_SETTINGS) and name not in STACK_SWITCHES | written
        }

    @staticmethod
    def _service_urls(ports: ServicePorts) -> dict[str, str]:
        return {
            "RAGTRACE_INGEST_URL": f"http://127.0.0.1:{ports.ingest}",
            "RAGTRACE_SEARCH_URL": f"http://127.0.0.1:{ports.gateway}",
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
        servers = [c for c in self.servers.components() if self.with_weaviate or c.name != "weaviate"]
        observability = self._observability() if self.with_observability else []
        vllm = [self.vllm] if self.with_llm else []
        services = self.services.components() if self.services else []
        return servers + observability + vllm + services

    def install(self, report: Callable[[str], None] = lambda line: None, leave: Collection[str] = ()) -> None:
        """Install what the components run from, on first use (infra/local/install.sh names each missing one and
        about how long it takes, before it starts), and make the model vLLM serves when it is one of the
        project's: nothing else, so `make up` never waits for what only other targets use. `leave`: components
        not to install now (`deferred`)."""
        install(name for c in self.components() if c.name not in leave for name in c.installs)
        if self.with_llm:
            llm.make_model(report=report)

    def deferred(self) -> list[str]:
        """The deferrable components whose binaries are not installed yet: `make up` starts the stack without
        them and has `installer` install and start them once it answers."""
        return [c.name for c in self.components() if c.deferrable and shutil.which(c.argv[0]) is None]

    def installer(self, names: Collection[str]) -> Component:
        """The background process that installs these components, then starts them (`up_deferred`)."""
        return Component(
            name=INSTALLER,
            port=0,
            argv=[
                sys.executable,
                "-m",
                "ragtrace_tools.cli",
                "stack",
                "up-deferred",
                "--state-dir",
                str(self.state_dir),
                *names,
            ],
            ready=lambda: True,
        )

    def start_installer(self, names: Collection[str]) -> Path:
        """Start `installer` for these components in the background; returns its log."""
        component = self.installer(names)
        self.supervisor.start(component)
        return self.supervisor.log_path(component.name)

    def up_deferred(self, names: Collection[str], report: Callable[[str], None] = lambda line: None) -> None:
        """Install these components, then start them, unless the rest of the stack was stopped meanwhile (a
        `make down` while Loki builds leaves nothing running)."""
        wanted = [c for c in self.components() if c.name in names]
        install(name for c in wanted for name in c.installs)
        if not any(self.supervisor.pid(c.name) for c in self.components() if c.name not in names):
            report(f"installed {', '.join(names)}; not started: the stack was stopped meanwhile")
            return
        for component in wanted:
            self.supervisor.start(component, report)
            report(f"{component.name}: started")

    def client_env(self) -> dict[str, str]:
        """What a client of this stack needs: the servers' settings, the services' URLs and the API key."""
        env = {**self.servers.client_env(), API_KEY: self.servers.secrets.api_key}
        if self.services:
            env |= self._service_urls(self.services.ports)
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
        ]
        if self.with_weaviate:
            listed.append(("Weaviate", f"http://127.0.0.1:{p.weaviate_http} (gRPC {p.weaviate_grpc})"))
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

    def up(self, report: Callable[[str], None] = lambda line: None, leave: Collection[str] = ()) -> list[Status]:
        """Start every component not yet running, in order, each once ready; restart each whose configuration
        changed, and stop the optional ones no longer wanted (vLLM, the observability backends), saying so in
        one line each through `report`. Twice in a row, the second does nothing. `leave`: components not to
        start now (`deferred`)."""
        self._write_env_file()
        for component in reversed(self._unwanted()):
            if self.supervisor.stop(component):
                report(f"{component.name}: stopped (no longer wanted)")
        for component in (c for c in self.components() if c.name not in leave):
            if self.supervisor.pid(component.name) is None and port_in_use(component.port):
                raise StartError(
                    f"{component.name}: port {component.port} is already in use by a process this stack did not "
                    f"start; stop it or choose another port"
                )
            self.supervisor.start(component, report)
        return self.status()

    def _unwanted(self) -> list[Component]:
        """The optional components this stack may have started that RAGTRACE_OBSERVABILITY, RAGTRACE_LLM and
        RAGTRACE_INDEX_BACKEND now leave out."""
        unwanted = [] if self.with_weaviate else [self.servers.weaviate()]
        if self.services and not self.with_observability:
            unwanted += self._observability()
        if self.services and not self.with_llm:
            unwanted.append(self.vllm)
        return unwanted

    def down(self) -> list[str]:
        """Stop what this stack started, in reverse order; returns the names that were running. Weaviate, the
        observability backends and vLLM are stopped whatever the settings that choose them say now."""
        every = [self.installer(()), *self.components(), *self._unwanted()]
        return [c.name for c in reversed(every) if self.supervisor.stop(c)]

    def status(self) -> list[Status]:
        return [self.supervisor.status(c) for c in self.components()]

    @contextlib.contextmanager
    def weaviate(self) -> Iterator[int | None]:
        """Weaviate running inside the block, for a tool that needs one beside the stack (the bench's peer): the
        stack's own when it runs one, else installed on first use, started, and stopped after the block. Yields
        its pid."""
        component = self.servers.weaviate()
        if self.supervisor.status(component).state is State.UP:
            yield self.supervisor.pid(component.name)
            return
        install(component.installs)
        with self.supervisor.running([component]):
            yield self.supervisor.pid(component.name)

    def runs_with(self, component: Component) -> str:
        """What `make status` shows a component runs with, where it applies: the index backend, the LLM, its
        model (the settings it was given, else their defaults)."""
        env = {**os.environ, **component.env}
        backend = f"backend {env.get('RAGTRACE_INDEX_BACKEND') or VectorStoreSettings.model_fields['backend'].default}"
        if component.name == "indexer-worker":
            return backend
        if component.name == "search-service":
            base_url = env.get("RAGTRACE_LLM_BASE_URL")
            if not base_url:
                return f"{backend}, LLM none (extractive answers)"
            return f"{backend}, LLM {base_url}, model {env.get('RAGTRACE_LLM_MODEL') or 'listed by the server'}"
        if component.name == "vllm":
            return f"model {llm.local_model()}"
        if component.name in self.deferred():
            if self.supervisor.pid(INSTALLER):
                return f"being installed in the background: {self.supervisor.log_path(INSTALLER)}"
            return "not installed: the next `make up` installs it"
        return ""

    def _write_env_file(self) -> None:
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        self.env_file.touch(mode=0o600)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.client_env().items()))
