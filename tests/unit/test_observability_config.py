"""The local observability stack runs the same monitoring/ files as Kind: the local rendering of each differs
from the file the Kind overlay mounts only at the address, port and path leaves listed here, and what it puts
there is local (127.0.0.1, or a path under the state directory). The pinned binaries' own checks of each
rendering are in tests/test_config_binaries.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragtrace_tools.devstack.observability import (
    MONITORING,
    ObservabilityPorts,
    ScrapeTargets,
    load,
    render_collector,
    render_loki,
    render_prometheus,
    render_tempo,
)
from ragtrace_tools.devstack.services import ServicePorts

Path_ = tuple[str, ...]

# "*" matches any one key (a list index, or a Prometheus job by its name).
ALLOWED: dict[str, set[Path_]] = {
    "otel-collector": {
        ("receivers", "otlp", "protocols", "grpc", "endpoint"),
        ("receivers", "otlp", "protocols", "http", "endpoint"),
        ("receivers", "filelog", "include"),  # the processes' log files instead of the node's pod logs
        ("exporters", "otlp/tempo", "endpoint"),
        ("exporters", "otlphttp/loki", "endpoint"),
        ("exporters", "prometheus", "endpoint"),
        ("extensions", "health_check", "endpoint"),
        ("service", "telemetry", "metrics", "readers", "0", "pull", "exporter", "prometheus", "host"),
        ("service", "telemetry", "metrics", "readers", "0", "pull", "exporter", "prometheus", "port"),
    },
    "tempo": {
        ("server", "http_listen_address"),
        ("server", "http_listen_port"),
        ("server", "grpc_listen_address"),
        ("server", "grpc_listen_port"),
        ("memberlist", "bind_port"),
        ("distributor", "receivers", "otlp", "protocols", "grpc", "endpoint"),
        ("distributor", "receivers", "otlp", "protocols", "http", "endpoint"),
        ("storage", "trace", "wal", "path"),
        ("storage", "trace", "local", "path"),
    },
    "loki": {
        ("server", "http_listen_address"),
        ("server", "http_listen_port"),
        ("server", "grpc_listen_address"),
        ("server", "grpc_listen_port"),
        ("common", "path_prefix"),
        ("common", "storage", "filesystem", "chunks_directory"),
        ("common", "storage", "filesystem", "rules_directory"),
        ("compactor", "working_directory"),
    },
    "prometheus": {
        ("rule_files",),
        # A job's targets: Kind asks the DNS of a headless Service, locally the ports are listed.
        ("scrape_configs", "*", "dns_sd_configs"),
        ("scrape_configs", "*", "static_configs"),
        ("scrape_configs", "prometheus", "static_configs", "0", "targets"),
    },
}


def _keyed(value: Any) -> Any:
    """Prometheus' jobs by name, so a job is compared with the job of the same name."""
    if isinstance(value, list) and value and all(isinstance(v, dict) and "job_name" in v for v in value):
        return {v["job_name"]: v for v in value}
    return value


def differences(kind: Any, local: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Each leaf path where the two differ (a key on one side only counts as a leaf), with the local value."""
    kind, local = _keyed(kind), _keyed(local)
    if isinstance(kind, dict) and isinstance(local, dict):
        for key in kind.keys() | local.keys():
            if key not in kind or key not in local:
                yield (*path, str(key)), local.get(key)
            else:
                yield from differences(kind[key], local[key], (*path, str(key)))
    elif (
        isinstance(kind, list)
        and isinstance(local, list)
        and len(kind) == len(local)
        and kind
        and any(isinstance(v, dict | list) for v in kind)
    ):
        for index, (k, v) in enumerate(zip(kind, local, strict=True)):
            yield from differences(k, v, (*path, str(index)))
    elif kind != local:
        yield path, local


def _allowed(path: Path_, patterns: set[Path_]) -> bool:
    return any(len(p) == len(path) and all(a in ("*", b) for a, b in zip(p, path, strict=True)) for p in patterns)


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    elif value is not None:
        yield value


PORTS = ObservabilityPorts.free()


def _rendered(name: str, state: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    servers = {"kafka": "127.0.0.1:9404", "minio": "127.0.0.1:9000", "redis-exporter": "127.0.0.1:9121"}
    targets = ScrapeTargets((ServicePorts.free(), ServicePorts.free()), servers)
    files = {
        "otel-collector": MONITORING / "otel-collector" / "config.yaml",
        "tempo": MONITORING / "tempo" / "tempo.yaml",
        "loki": MONITORING / "loki" / "loki.yaml",
        "prometheus": MONITORING / "prometheus" / "prometheus.yml",
    }
    kind = load(files[name])
    local = {
        "otel-collector": lambda: render_collector(kind, PORTS, [str(state / "logs" / "ingest-api.log")]),
        "tempo": lambda: render_tempo(kind, PORTS, state / "tempo"),
        "loki": lambda: render_loki(kind, PORTS, state / "loki"),
        "prometheus": lambda: render_prometheus(kind, PORTS, targets),
    }[name]()
    return kind, local


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_local_rendering_differs_from_kind_only_in_addresses_ports_and_paths(name: str, tmp_path: Path) -> None:
    kind, local = _rendered(name, tmp_path)
    found = list(differences(kind, local))
    assert found, "the local rendering changed nothing: it would listen on Kind's addresses"
    outside = [path for path, _ in found if not _allowed(path, ALLOWED[name])]
    assert not outside, f"{name}: the local rendering differs from Kind's file beyond addresses/ports/paths: {outside}"
    ports = set(vars(PORTS).values())
    for path, value in found:
        for leaf in _leaves(value):
            local_leaf = leaf in ports or (
                isinstance(leaf, str) and ("127.0.0.1" in leaf or leaf.startswith((str(tmp_path), str(MONITORING))))
            )
            assert local_leaf, f"{name}: {'.'.join(path)} = {leaf!r} is not a local address, port or path"


def test_prometheus_scrapes_every_ragtrace_process_of_each_pipeline_and_the_servers(tmp_path: Path) -> None:
    _, local = _rendered("prometheus", tmp_path)
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in local["scrape_configs"]}
    for job in (
        "ingest-api",
        "inbox-worker",
        "search-gateway",
        "embedding-worker",
        "indexer-worker",
        "embedding-service",
    ):
        assert len(jobs[job]) == 2, job
    assert jobs["search-service"] and jobs["minio"] == ["127.0.0.1:9000"]
    assert jobs["kafka"] == ["127.0.0.1:9404"] and jobs["redis-exporter"] == ["127.0.0.1:9121"]
    assert jobs["vllm"] == [], "nothing local to scrape: no targets"
