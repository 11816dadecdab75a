"""The local-stack supervisor behind `make up/down/status`, exercised on a real redis-server."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from ragtrace_tools.cli import app
from ragtrace_tools.devstack import LocalStack, StackPorts, StartError, State
from ragtrace_tools.devstack.servers import LOWEST_FREE_PORT, LocalServers, cache_dir, ephemeral_range, free_ports
from ragtrace_tools.devstack.supervisor import NOT_RECORDED, Component, Supervisor
from tests.pipeline import wait_until


@pytest.fixture
def servers(tmp_path: Path) -> LocalServers:
    return LocalServers(tmp_path, StackPorts.free())


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    supervisor = Supervisor(tmp_path)
    yield supervisor
    for pid_file in (tmp_path / "run").glob("*.pid"):
        pid = supervisor.pid(pid_file.stem)
        if pid:
            os.killpg(pid, signal.SIGKILL)


def _exited(pid: int) -> bool:
    """The process is gone, or a zombie whose exit status its parent has not collected yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_start_is_idempotent_and_status_follows_the_process(supervisor: Supervisor, servers: LocalServers) -> None:
    redis = servers.redis()
    assert supervisor.start(redis) is True
    pid = supervisor.pid("redis")
    assert pid is not None
    assert supervisor.status(redis).state is State.UP

    assert supervisor.start(redis) is False, "a second start must reuse the running server"
    assert supervisor.pid("redis") == pid

    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: supervisor.status(redis).state is State.DOWN, 10, 0.05, "redis seen down")
    assert supervisor.start(redis) is True, "a dead server is started again"
    assert supervisor.status(redis).state is State.UP


def test_stop_ends_the_process_group_and_removes_the_pid_file(supervisor: Supervisor, servers: LocalServers) -> None:
    redis = servers.redis()
    supervisor.start(redis)
    pid = supervisor.pid("redis")
    assert supervisor.stop(redis) is True
    assert pid is not None and _exited(pid)
    assert supervisor.pid("redis") is None
    assert supervisor.stop(redis) is False, "nothing left to stop"


def test_stop_never_signals_a_process_it_did_not_start(supervisor: Supervisor, servers: LocalServers) -> None:
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # A pid file left behind whose pid now belongs to another process (pid reuse): start times differ.
        supervisor.run_dir.mkdir(parents=True, exist_ok=True)
        (supervisor.run_dir / "redis.pid").write_text(f"{stranger.pid} 1\n")
        assert supervisor.stop(servers.redis()) is False
        assert stranger.poll() is None, "the unrelated process must still run"
    finally:
        stranger.kill()
        stranger.wait()


def test_a_start_failure_names_the_component_and_its_log(supervisor: Supervisor, tmp_path: Path) -> None:
    broken = Component(
        name="broken",
        port=1,
        argv=["redis-server", str(tmp_path / "missing.conf")],
        ready=lambda: False,
        start_timeout_s=10,
    )
    with pytest.raises(StartError) as error:
        supervisor.start(broken)
    message = str(error.value)
    assert message.startswith("broken exited with code")
    assert str(supervisor.log_path("broken")) in message
    assert supervisor.log_path("broken").read_text(), "the component's own output is in its log"


def test_a_component_that_never_gets_ready_times_out_naming_it(supervisor: Supervisor) -> None:
    silent = Component(name="silent", port=1, argv=["sleep", "30"], ready=lambda: False, start_timeout_s=1)
    with pytest.raises(StartError, match=r"^silent was not ready on port 1 within 1s; log: "):
        supervisor.start(silent)
    assert supervisor.pid("silent") is None, "a failed start leaves nothing running"


class Interrupted(BaseException):
    """What a test's timeout raises in the middle of a wait: not an Exception, so no probe swallows it."""


def test_a_start_interrupted_midway_is_stopped_when_the_block_ends(supervisor: Supervisor) -> None:
    def interrupted() -> bool:
        raise Interrupted

    slow = Component(name="slow", port=1, argv=["sleep", "30"], ready=interrupted, start_timeout_s=10)
    with pytest.raises(Interrupted), supervisor.running([slow]):
        pass
    assert supervisor.pid("slow") is None, "the process whose start was interrupted is stopped too"


def test_up_refuses_a_port_held_by_someone_else(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack = LocalStack(tmp_path, StackPorts(kafka=port))
        with pytest.raises(StartError, match=rf"^kafka: port {port} is already in use"):
            stack.up()


def test_cli_status_shows_each_component_on_the_ports_it_was_started_with(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, StackPorts.free())
    redis = stack.servers.redis()
    stack.supervisor.start(redis)
    try:
        result = CliRunner().invoke(
            app,
            ["stack", "status", "--state-dir", str(tmp_path), "--check"],
            env={"COLUMNS": "300", "RAGTRACE_LLM": ""},
        )
    finally:
        stack.supervisor.stop(redis)
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 2}
    assert result.exit_code == 1, "--check fails while anything is down"
    assert " up " in lines["redis"] and f" {redis.port} " in lines["redis"]
    assert " down " in lines["kafka"] and "weaviate" not in lines, "Weaviate is the Weaviate backend's alone"
    assert "LLM none (extractive answers)" in lines["search-service"], "what it runs with"


def test_on_a_fresh_machine_loki_and_the_redis_exporter_are_installed_after_the_stack_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGTRACE_LLM", "")
    monkeypatch.setenv("RAGTRACE_OBSERVABILITY", "on")
    installed = cache_dir()
    fresh = tmp_path / "cache"  # the installed cache less Loki and the Redis exporter
    fresh.mkdir()
    for entry in installed.iterdir():
        if not entry.name.startswith(("loki-", "redis_exporter-")):
            (fresh / entry.name).symlink_to(entry)
    monkeypatch.setenv("RAGTRACE_CACHE_DIR", str(fresh))
    assert LocalStack(tmp_path / "fresh", StackPorts.free()).deferred() == ["redis-exporter", "loki"]

    monkeypatch.setenv("RAGTRACE_CACHE_DIR", str(installed))
    stack = LocalStack(tmp_path / "state", StackPorts.free())
    assert stack.deferred() == [], "once installed, they start with the rest"
    reported: list[str] = []
    stack.up_deferred(["redis-exporter"], reported.append)
    assert stack.supervisor.pid("redis-exporter") is None, "a stack stopped meanwhile is not half started again"
    assert reported == ["installed redis-exporter; not started: the stack was stopped meanwhile"]

    stack.supervisor.start(stack.servers.redis())
    try:
        log = stack.start_installer(["redis-exporter"])
        # The installer's own report, not the exporter's state: stopping the stack between the two would
        # stop the exporter before the installer saw it ready.
        wait_until(
            lambda: log.is_file() and "redis-exporter: started" in log.read_text(), 60, 0.2, f"the report in {log}"
        )
        assert stack.supervisor.status(stack.servers.redis_exporter()).state is State.UP
    finally:
        stopped = stack.down()
    assert {"redis", "redis-exporter"} <= set(stopped)


def _greeter(tmp_path: Path, **env: str) -> Component:
    """A process that writes its GREETING to a file once it runs: ready when the file says what it was given."""
    said = tmp_path / "greeting"
    script = (
        "import os, pathlib, sys, time; pathlib.Path(sys.argv[1]).write_text(os.environ['GREETING']); time.sleep(600)"
    )
    return Component(
        name="greeter",
        port=1,
        argv=[sys.executable, "-c", script, str(said)],
        ready=lambda: said.exists() and said.read_text() == env["GREETING"],
        env=env,
    )


def test_a_component_started_otherwise_is_restarted_saying_what_changed(supervisor: Supervisor, tmp_path: Path) -> None:
    reported: list[str] = []
    first = _greeter(tmp_path, GREETING="hello-secret-1", OTHER="same")
    assert supervisor.start(first, reported.append) is True
    pid = supervisor.pid("greeter")
    assert pid is not None

    assert supervisor.start(first, reported.append) is False, "the same configuration keeps the running process"
    assert supervisor.pid("greeter") == pid and reported == []

    second = _greeter(tmp_path, GREETING="hello-secret-2", OTHER="same")
    assert supervisor.changes(second) == ["GREETING"]
    assert supervisor.status(second).changed == ("GREETING",)
    assert supervisor.start(second, reported.append) is True
    assert reported == ["greeter: restarting (GREETING changed)"], "one line, the name alone"
    assert supervisor.pid("greeter") not in (None, pid)
    wait_until(lambda: _exited(pid), 10, 0.05, "the old greeter gone")
    assert (tmp_path / "greeting").read_text() == "hello-secret-2", "the new process has the new environment"
    assert supervisor.changes(second) == []
    recorded = "".join(path.read_text() for path in supervisor.run_dir.iterdir())
    assert "hello-secret" not in recorded, "no value is written down, only digests"

    moved = dataclasses.replace(second, argv=[*second.argv, "--moved"])
    assert supervisor.changes(moved) == ["command line"]


def test_a_process_whose_configuration_was_not_recorded_is_restarted(supervisor: Supervisor, tmp_path: Path) -> None:
    greeter = _greeter(tmp_path, GREETING="hi")
    supervisor.start(greeter)
    pid = supervisor.pid("greeter")
    for path in supervisor.run_dir.glob("greeter.fingerprint.json"):  # as a stack started before they were kept
        path.unlink()
    assert supervisor.changes(greeter) == [NOT_RECORDED]
    reported: list[str] = []
    assert supervisor.start(greeter, reported.append) is True and supervisor.pid("greeter") != pid
    assert reported == ["greeter: restarting (its configuration was not recorded)"]


def test_switching_the_llm_changes_what_the_search_service_and_prometheus_run_with_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make up LLM=vllm` after `make up`: vLLM joins, the search service gets its URL and model and Prometheus
    scrapes it; every other component would start exactly as before, so it is kept."""
    ports = StackPorts.free()

    def fingerprints(llm: str) -> dict[str, dict[str, str]]:
        monkeypatch.setenv("RAGTRACE_LLM", llm)  # what `make up LLM=...` sets
        return {c.name: c.fingerprint() for c in LocalStack(tmp_path, ports).components()}

    without, with_llm = fingerprints("none"), fingerprints("vllm")
    assert set(with_llm) - set(without) == {"vllm"}
    assert {name for name in without if without[name] != with_llm[name]} == {"search-service", "prometheus"}
    search_before, search_after = without["search-service"], with_llm["search-service"]
    changed = {name for name in search_after if search_before.get(name) != search_after[name]}
    assert changed == {"RAGTRACE_LLM_BASE_URL", "RAGTRACE_LLM_MODEL"}


def test_free_ports_are_distinct_bindable_and_below_the_kernel_s_ephemeral_range(tmp_path: Path) -> None:
    """Below the range no outgoing connection can take a port between its choice and its server's bind."""
    low, _ = ephemeral_range()
    ports = free_ports(40)
    assert len(set(ports)) == 40
    assert all(LOWEST_FREE_PORT <= port < low for port in ports), ports
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports[0]))  # free once handed out
    (tmp_path / "range").write_text("32768\t60999\n")
    assert ephemeral_range(tmp_path / "range") == (32768, 60999)
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)


def test_free_ports_skip_a_port_that_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", LOWEST_FREE_PORT))
        taken.listen()
        assert free_ports(1, below=LOWEST_FREE_PORT + 2) == [LOWEST_FREE_PORT + 1]
        # Nothing free below the range: the kernel's own choice, still a port of its own.
        [kernel_choice] = free_ports(2, below=LOWEST_FREE_PORT + 2)[1:]
        assert kernel_choice >= LOWEST_FREE_PORT + 2
