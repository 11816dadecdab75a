"""infra/local/install.sh runs its Go builds two at a time and stops on the first that fails, with its status:
checked with a stand-in `go` on PATH that records when each build runs (no real build, no network)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ragtrace_tools.devstack.install import INSTALL_SCRIPT

# `go env GOVERSION` and `go install PACKAGE@VERSION` (one second, into $GOBIN), each run logged with its times.
STAND_IN_GO = """#!/bin/sh
case "$1" in
  env) echo go1.99.0 ;;
  install)
    package="${2%@*}"
    echo "start $package $(date +%s.%N)" >> "$RUNS"
    sleep 1
    [ "$package" != "$FAIL" ] || exit 7
    touch "$GOBIN/$(basename "$package")"
    echo "end $package $(date +%s.%N)" >> "$RUNS" ;;
esac
"""
GO_BUILDS = ["minio", "weaviate", "kustomize"]


def _install(tmp_path: Path, fail: str = "") -> tuple[int, list[tuple[str, str, float]]]:
    bin_dir, runs = tmp_path / "bin", tmp_path / "runs"
    bin_dir.mkdir(exist_ok=True)
    go = bin_dir / "go"
    go.write_text(STAND_IN_GO)
    go.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RAGTRACE_CACHE_DIR": str(tmp_path / "cache"),
        "RUNS": str(runs),
        "FAIL": fail,
    }
    result = subprocess.run([str(INSTALL_SCRIPT), *GO_BUILDS], env=env, capture_output=True, check=False)
    events = [line.split() for line in runs.read_text().splitlines()]
    return result.returncode, [(kind, package, float(at)) for kind, package, at in events]


def _most_at_once(events: list[tuple[str, str, float]]) -> int:
    running = most = 0
    for kind, _, _ in sorted(events, key=lambda event: event[2]):
        running += 1 if kind == "start" else -1
        most = max(most, running)
    return most


def test_go_builds_run_two_at_a_time_and_all_finish(tmp_path: Path) -> None:
    status, events = _install(tmp_path)
    assert status == 0
    assert sorted(package for kind, package, _ in events if kind == "end") == sorted(
        [
            "github.com/minio/minio",
            "github.com/weaviate/weaviate/cmd/weaviate-server",
            "sigs.k8s.io/kustomize/kustomize/v5",
        ]
    )
    assert _most_at_once(events) == 2
    assert list((tmp_path / "cache").glob("minio-*/minio")), "each binary lands under its pinned version"


def test_a_failed_go_build_fails_the_script_with_its_status(tmp_path: Path) -> None:
    status, _ = _install(tmp_path, fail="github.com/weaviate/weaviate/cmd/weaviate-server")
    assert status == 7
    assert not list((tmp_path / "cache").glob("weaviate-server-*")), "nothing half-installed"
