"""The observability backends of the local stack: the OpenTelemetry Collector, Tempo, Loki and Prometheus.

Each is started from the same file in monitoring/ that the Kind overlay mounts (infra/kind/base), rendered for
127.0.0.1: only addresses, ports and paths differ (tests/unit/test_observability_config.py proves it). The
rendered files go to <state>/<component>/, next to that component's data.

    ragtrace processes ─OTLP/HTTP─► collector ─OTLP/gRPC─► Tempo (traces; TraceQL and trace by id on its HTTP port)
    supervisor log files ─filelog─► collector ─OTLP/HTTP─► Loki (logs with trace_id/span_id; LogQL)
    Prometheus ◄─scrape─ every ragtrace process, Kafka (JMX exporter agent), MinIO, the Redis exporter, the
                         collector (monitoring/prometheus/rules loaded)
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import yaml

from ragtrace_tools.devstack.servers import (
    REPO_ROOT,
    cache_dir,
    kind_statefulset_args,
    localized_args,
    pinned_versions,
    with_free_ports,
)
from ragtrace_tools.devstack.services import ServicePorts
from ragtrace_tools.devstack.supervisor import Component

MONITORING = REPO_ROOT / "monitoring"
KIND_MONITORING = REPO_ROOT / "infra" / "kind" / "base" / "monitoring"
LOCAL = "127.0.0.1"

Config = dict[str, Any]
Prepare = Callable[[], None]


@dataclass(frozen=True)
class ObservabilityPorts:
    otlp_grpc: int = 4317  # the collector's receivers: what every ragtrace process exports to (HTTP)
    otlp_http: int = 4318
    collector_metrics: int = 8888  # the collector's own telemetry
    collector_exported: int = 8889  # metrics pushed to the collector, for Prometheus
    collector_health: int = 13133
    tempo: int = 3200  # query API: /api/traces/<id>, /api/search?q=<TraceQL>
    tempo_otlp_grpc: int = 4417  # what the collector exports to
    tempo_otlp_http: int = 4418
    tempo_grpc: int = 9095
    tempo_memberlist: int = 7956
    loki: int = 3100  # push (OTLP at /otlp) and LogQL
    loki_grpc: int = 9096
    prometheus: int = 9090

    @classmethod
    def free(cls) -> ObservabilityPorts:
        return with_free_ports(cls)

    @property
    def otlp_endpoint(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT for a ragtrace process: the collector's OTLP/HTTP receiver."""
        return f"http://{LOCAL}:{self.otlp_http}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        """The collector's OTLP/gRPC receiver: what vLLM exports its spans to (it speaks gRPC by default)."""
        return f"http://{LOCAL}:{self.otlp_grpc}"

    @property
    def tempo_url(self) -> str:
        """Tempo's query API: RAGTRACE_TRACE_QUERY_URL for the gateway and the tools."""
        return f"http://{LOCAL}:{self.tempo}"


@dataclass(frozen=True)
class ScrapeTargets:
    """What the local Prometheus scrapes, by job of monitoring/prometheus/prometheus.yml: each ragtrace
    process of every pipeline given, and the servers' metrics endpoints (job → host:port: Kafka's JMX exporter
    agent, MinIO, the Redis exporter, LocalServers.metrics_addresses; vLLM when it runs). Jobs with nothing local
    (vllm without one, and any server not given) keep no targets."""

    services: tuple[ServicePorts, ...] = ()
    servers: Mapping[str, str] = field(default_factory=dict)

    def by_job(self, ports: ObservabilityPorts) -> dict[str, list[str]]:
        def each(port_of: str) -> list[str]:
            return [f"{LOCAL}:{getattr(s, port_of)}" for s in self.services]

        return {
            "ingest-api": each("ingest"),
            "inbox-worker": each("inbox_metrics"),
            "search-gateway": each("gateway"),
            "embedding-worker": each("embedding_metrics"),
            "indexer-worker": each("indexer_metrics"),
            "embedding-service": each("embedding_service_metrics"),
            "search-service": each("search_metrics"),
            **{job: [address] for job, address in self.servers.items()},
            "otel-collector": [f"{LOCAL}:{ports.collector_metrics}"],
            "otel-collector-exported": [f"{LOCAL}:{ports.collector_exported}"],
            "prometheus": [f"{LOCAL}:{ports.prometheus}"],
        }


def load(path: Path) -> Config:
    loaded: Config = yaml.safe_load(path.read_text())
    return loaded


def _addr(port: int) -> str:
    return f"{LOCAL}:{port}"


# The local renderings: the Kind file, with its addresses, ports and paths made local ------------------------


def render_collector(kind: Config, ports: ObservabilityPorts, log_files: Iterable[str]) -> Config:
    c = copy.deepcopy(kind)
    otlp = c["receivers"]["otlp"]["protocols"]
    otlp["grpc"]["endpoint"] = _addr(ports.otlp_grpc)
    otlp["http"]["endpoint"] = _addr(ports.otlp_http)
    c["receivers"]["filelog"]["include"] = list(log_files)
    c["exporters"]["otlp/tempo"]["endpoint"] = _addr(ports.tempo_otlp_grpc)
    c["exporters"]["otlphttp/loki"]["endpoint"] = f"http://{_addr(ports.loki)}/otlp"
    c["exporters"]["prometheus"]["endpoint"] = _addr(ports.collector_exported)
    c["extensions"]["health_check"]["endpoint"] = _addr(ports.collector_health)
    pull = c["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    pull["host"], pull["port"] = LOCAL, ports.collector_metrics
    return c


def _listen(server: Config, http_port: int, grpc_port: int) -> None:
    """The `server` block of Tempo and Loki (both on Grafana's dskit): on 127.0.0.1, at these ports."""
    server.update(
        http_listen_address=LOCAL, http_listen_port=http_port, grpc_listen_address=LOCAL, grpc_listen_port=grpc_port
    )


def render_tempo(kind: Config, ports: ObservabilityPorts, data: Path) -> Config:
    c = copy.deepcopy(kind)
    _listen(c["server"], ports.tempo, ports.tempo_grpc)
    c["memberlist"]["bind_port"] = ports.tempo_memberlist
    otlp = c["distributor"]["receivers"]["otlp"]["protocols"]
    otlp["grpc"]["endpoint"] = _addr(ports.tempo_otlp_grpc)
    otlp["http"]["endpoint"] = _addr(ports.tempo_otlp_http)
    storage = c["storage"]["trace"]
    storage["wal"]["path"] = str(data / "wal")
    storage["local"]["path"] = str(data / "blocks")
    return c


def render_loki(kind: Config, ports: ObservabilityPorts, data: Path) -> Config:
    c = copy.deepcopy(kind)
    _listen(c["server"], ports.loki, ports.loki_grpc)
    common = c["common"]
    common["path_prefix"] = str(data)
    common["storage"]["filesystem"]["chunks_directory"] = str(data / "chunks")
    common["storage"]["filesystem"]["rules_directory"] = str(data / "rules")
    c["compactor"]["working_directory"] = str(data / "compactor")
    return c


def render_prometheus(kind: Config, ports: ObservabilityPorts, targets: ScrapeTargets) -> Config:
    """Rules from monitoring/prometheus/rules, and each job's targets on 127.0.0.1. Kind finds a job's pods
    through the DNS of a headless Service; here the ports are known, so the job lists them (a DNS lookup of
    localhost is no substitute: Prometheus asks the resolver, not /etc/hosts, and it answers NXDOMAIN)."""
    c = copy.deepcopy(kind)
    c["rule_files"] = [str(MONITORING / "prometheus" / "rules" / "*.yml")]
    local = targets.by_job(ports)
    for job in c["scrape_configs"]:
        found = local.get(job["job_name"], [])
        if "dns_sd_configs" in job:
            del job["dns_sd_configs"]
            job["static_configs"] = [{"targets": found}]
        else:
            job["static_configs"][0]["targets"] = found
    return c


def prometheus_args(config: Path, data: Path, port: int) -> list[str]:
    """The Kind StatefulSet's container args, with the config and storage paths made local, and its port."""
    args = localized_args(
        kind_statefulset_args(KIND_MONITORING / "prometheus.yaml"),
        {"--config.file": str(config), "--storage.tsdb.path": str(data)},
    )
    return [*args, f"--web.listen-address={_addr(port)}"]


def _answers(url: str) -> bool:
    return httpx.get(url, timeout=1).status_code == 200


class Observability:
    """The four backends as supervised components, from one state directory and one set of ports.
    `log_files`: the paths (globs allowed) of the ragtrace processes' logs the collector ships to Loki."""

    def __init__(self, state_dir: Path, ports: ObservabilityPorts, log_files: Iterable[str]) -> None:
        self.state_dir = state_dir
        self.ports = ports
        self.log_files = list(log_files)
        self.versions = pinned_versions()
        self.cache = cache_dir()

    @property
    def otlp_endpoint(self) -> str:
        return self.ports.otlp_endpoint

    @property
    def tempo_url(self) -> str:
        return self.ports.tempo_url

    @property
    def loki_url(self) -> str:
        return f"http://{_addr(self.ports.loki)}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{_addr(self.ports.prometheus)}"

    def client_env(self) -> dict[str, str]:
        return {
            "RAGTRACE_TRACE_QUERY_URL": self.tempo_url,
            "RAGTRACE_LOKI_URL": self.loki_url,
            "RAGTRACE_PROMETHEUS_URL": self.prometheus_url,
        }

    def components(self, targets: ScrapeTargets) -> list[Component]:
        """In start order: the backends, then the collector that feeds them, then Prometheus."""
        return [*self.backends(), self.collector(), self.prometheus(targets)]

    def backends(self) -> list[Component]:
        """Where traces and logs go: Tempo and Loki (independent of each other)."""
        return [self.tempo(), self.loki()]

    def _dir(self, name: str) -> Path:
        path = self.state_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _config(
        self, name: str, render: Callable[[], Config], filename: str = "config.yaml"
    ) -> tuple[Path, Prepare, Callable[[], str]]:
        """Where the component's rendered config goes, the step that writes it before each start, and its text
        (what the supervisor compares with the running process's, to restart it when the file changes)."""
        path = self._dir(name) / filename

        def text() -> str:
            return yaml.safe_dump(render(), sort_keys=False)

        def write() -> None:
            path.write_text(text())

        return path, write, text

    def _binary(self, name: str, version_key: str, binary: str | None = None) -> str:
        return str(self.cache / f"{name}-{self.versions[version_key]}" / (binary or name))

    def collector(self) -> Component:
        config, prepare, text = self._config(
            "otel-collector",
            lambda: render_collector(load(MONITORING / "otel-collector" / "config.yaml"), self.ports, self.log_files),
        )
        return Component(
            name="otel-collector",
            port=self.ports.otlp_http,
            argv=[self._binary("otelcol-ragtrace", "OTELCOL_VERSION"), f"--config={config}"],
            ready=lambda: _answers(f"http://{_addr(self.ports.collector_health)}/"),
            prepare=prepare,
            config=text,
            installs=("otelcol",),
        )

    def tempo(self) -> Component:
        return self._grafana(
            "tempo", "TEMPO_VERSION", MONITORING / "tempo" / "tempo.yaml", render_tempo, self.ports.tempo
        )

    def loki(self) -> Component:
        loki = self._grafana("loki", "LOKI_VERSION", MONITORING / "loki" / "loki.yaml", render_loki, self.ports.loki)
        return replace(loki, deferrable=True)  # logs stay in .state/logs until Loki is built

    def _grafana(
        self,
        name: str,
        version_key: str,
        kind_file: Path,
        render: Callable[[Config, ObservabilityPorts, Path], Config],
        port: int,
    ) -> Component:
        """Tempo or Loki: one binary with `-config.file`, its data under <state>/<name>, ready on /ready (once
        its ingester has joined its ring: about 15 s)."""
        data = self._dir(name)
        config, prepare, text = self._config(name, lambda: render(load(kind_file), self.ports, data))
        return Component(
            name=name,
            port=port,
            argv=[self._binary(name, version_key), f"-config.file={config}"],
            ready=lambda: _answers(f"http://{_addr(port)}/ready"),
            prepare=prepare,
            config=text,
            start_timeout_s=120,
            installs=(name,),
        )

    def prometheus(self, targets: ScrapeTargets) -> Component:
        home = self._dir("prometheus")
        config, prepare, text = self._config(
            "prometheus",
            lambda: render_prometheus(load(MONITORING / "prometheus" / "prometheus.yml"), self.ports, targets),
            "prometheus.yml",
        )
        return Component(
            name="prometheus",
            port=self.ports.prometheus,
            argv=[
                shutil.which("prometheus") or "prometheus",
                *prometheus_args(config, home / "data", self.ports.prometheus),
            ],
            ready=lambda: _answers(f"{self.prometheus_url}/-/ready"),
            prepare=prepare,
            config=text,
            installs=("prometheus",),
        )
