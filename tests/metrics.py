"""Reading Prometheus expositions, the metrics table of docs/observability.md and the PromQL in monitoring/."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def samples(exposition: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(exposition) for sample in family.samples]


def exemplar_trace_ids(openmetrics: str, name: str) -> set[str]:
    """The trace ids of the exemplars on the samples called `name` (OpenMetrics exposition)."""
    return {
        sample.exemplar.labels["trace_id"]
        for family in openmetrics_families(openmetrics)  # type: ignore[no-untyped-call]
        for sample in family.samples
        if sample.name == name and sample.exemplar is not None
    }


def value(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    return sum(s.value for s in samples(exposition) if s.name == name and labels.items() <= dict(s.labels).items())


def prometheus_api(prometheus: str, path: str, **params: str) -> Any:
    """The `data` of a successful answer of Prometheus' HTTP API (`path` under /api/v1/)."""
    body = httpx.get(f"{prometheus}/api/v1/{path}", params=params, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]


def exposed_names(exposition: str) -> set[str]:
    """Every series name the exposition declares, whether or not it has samples yet: a labelled metric that
    has seen nothing still has its HELP and TYPE lines."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


@dataclass(frozen=True)
class DocumentedMetric:
    name: str
    type: str
    labels: frozenset[str]
    services: tuple[str, ...]

    @property
    def sample_name(self) -> str:
        """The name its samples carry: a histogram's `_bucket` series hold every label."""
        return self.name + "_bucket" if self.type.startswith("histogram") else self.name


def documented_metrics() -> list[DocumentedMetric]:
    """The rows of the metrics table in docs/observability.md."""
    row = r"^\| `(ragtrace_\w+)` \|([^|]+)\|([^|]*)\|([^|]+)\|"
    rows = re.findall(row, (ROOT / "docs" / "observability.md").read_text(), re.M)
    return [
        DocumentedMetric(
            name,
            kind.strip(),
            frozenset(label.strip() for label in labels.split(",") if label.strip()),
            tuple(service.strip() for service in services.split(",")),
        )
        for name, kind, labels, services in rows
    ]


def _expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every rule and every dashboard query in monitoring/."""
    for path in sorted((MONITORING / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name}: {rule.get('record') or rule.get('alert')}", rule["expr"]
    for path in sorted((MONITORING / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.name}: {panel['title']}", target["expr"]


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in (MONITORING / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def queried_names() -> dict[str, set[str]]:
    """Metric name → where monitoring/ queries it."""
    return names_in(_expressions())


def names_in(expressions: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """Metric name → where, of the (where, PromQL) given. Grafana's interval variables are given a value first."""
    found: dict[str, set[str]] = {}
    for where, expr in expressions:
        parsed = promql_parser.parse(re.sub(r"\$__(rate_interval|interval|range)", "5m", expr))

        def visit(node: Any, where: str = where) -> None:
            if isinstance(node, promql_parser.VectorSelector) and node.name:
                found.setdefault(node.name, set()).add(where)

        promql_parser.walk(parsed, visit)
    return found
