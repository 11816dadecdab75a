"""monitoring/ checked without a cluster or a server binary: every alert has a rule test, the Grafana
provisioning's links between datasources, the queries parse, and the collector's pipelines (promtool's own
checks: tests/test_config_binaries.py)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.metrics import MONITORING, queried_names

PROMETHEUS = MONITORING / "prometheus"
GRAFANA = MONITORING / "grafana"


def test_every_alert_has_a_unit_test() -> None:
    alerts = {
        rule["alert"]
        for path in (PROMETHEUS / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tested = {
        case["alertname"]
        for path in (PROMETHEUS / "tests").glob("*.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - tested == set(), "alerts no test sees firing"


def _datasources() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text())
    return {source["uid"]: source for source in config["datasources"]}


def test_datasources_link_metrics_traces_and_logs_both_ways() -> None:
    sources = _datasources()
    assert {sources[uid]["type"] for uid in sources} == {"prometheus", "tempo", "loki"}
    prometheus, tempo, loki = sources["prometheus"], sources["tempo"], sources["loki"]
    assert prometheus["jsonData"]["exemplarTraceIdDestinations"] == [{"name": "trace_id", "datasourceUid": "tempo"}]
    assert tempo["jsonData"]["tracesToLogsV2"]["datasourceUid"] == "loki"
    assert tempo["jsonData"]["tracesToLogsV2"]["filterByTraceID"] is True
    [derived] = loki["jsonData"]["derivedFields"]
    assert derived["datasourceUid"] == "tempo"
    # The regex finds the trace id in a ragtrace log line (ragtrace/runtime.py's JSON formatter).
    line = json.dumps({"message": "x", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"})
    match = re.search(derived["matcherRegex"], line)
    assert match and match.group(1) == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("name", ["overview", "ingestion", "search", "infrastructure", "gpu"])
def test_dashboards_query_provisioned_datasources(name: str) -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / f"{name}.json").read_text())
    assert dashboard["uid"] == f"ragtrace-{name}"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] in _datasources(), panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_dashboard_and_rule_queries_parse() -> None:
    names = queried_names()  # raises on a query that is not PromQL
    assert any(name.startswith("ragtrace_") for name in names)


def test_collector_pipelines_use_only_what_is_defined() -> None:
    config = yaml.safe_load((MONITORING / "otel-collector" / "config.yaml").read_text())
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            undefined = set(pipeline[kind]) - set(config[kind])
            assert not undefined, f"{name} pipeline uses undefined {kind}: {undefined}"
    assert "tempo" in config["exporters"]["otlp/tempo"]["endpoint"]
    assert config["exporters"]["otlphttp/loki"]["endpoint"].endswith("/otlp")
