"""The configs checked by the pinned servers' own binaries, which `make install` builds (so this is not the
unit tier): promtool on monitoring/'s Prometheus config, rules and rule tests; and each local rendering of
monitoring/ by its binary (collector `validate`, Tempo `-config.verify`, Loki `-verify-config`, promtool)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ragtrace_tools.devstack.observability import Observability, ObservabilityPorts, ScrapeTargets
from ragtrace_tools.devstack.supervisor import Component
from tests.metrics import MONITORING

PROMETHEUS = MONITORING / "prometheus"
PORTS = ObservabilityPorts.free()


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make install` installs Debian's prometheus package"
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def test_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", "--syntax-only", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_and_recording_rules_are_valid() -> None:
    rules = sorted((PROMETHEUS / "rules").glob("*.yml"))
    assert rules
    result = promtool("check", "rules", *rules)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _binary(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: `make install` builds it (infra/local/install.sh)")
    return path


def _check_command(stack: Observability, component: str) -> list[str]:
    """The pinned binary's own check of the component's rendered config (written first)."""
    makers: dict[str, Callable[[], Component]] = {
        "otel-collector": stack.collector,
        "tempo": stack.tempo,
        "loki": stack.loki,
        "prometheus": lambda: stack.prometheus(ScrapeTargets()),
    }
    made = makers[component]()
    assert made.prepare is not None
    made.prepare()
    if component == "prometheus":
        return [shutil.which("promtool") or "promtool", "check", "config", made.argv[1].split("=", 1)[1]]
    # made.argv[-1] is the config flag the component starts with (--config=… or -config.file=…).
    check = {"otel-collector": "validate", "tempo": "-config.verify=true", "loki": "-verify-config"}[component]
    return [str(_binary(Path(made.argv[0]))), check, made.argv[-1]]


@pytest.mark.parametrize("component", ["otel-collector", "tempo", "loki", "prometheus"])
def test_the_pinned_binaries_accept_the_local_rendering(component: str, tmp_path: Path) -> None:
    command = _check_command(Observability(tmp_path, PORTS, [str(tmp_path / "logs" / "*.log")]), component)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("component", "key"), [("tempo", "storage"), ("loki", "compactor")])
def test_tempo_and_loki_refuse_a_misspelt_key(component: str, key: str, tmp_path: Path) -> None:
    """Their check reads the config as strictly as their start does: a misspelt key fails it."""
    command = _check_command(Observability(tmp_path, PORTS, []), component)
    config = tmp_path / component / "config.yaml"
    config.write_text(config.read_text().replace(f"\n{key}:", f"\n{key}_misspelt:", 1))
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and f"{key}_misspelt" in result.stdout + result.stderr
