"""Starts, health-checks and stops local processes by pid file: the engine behind `make up/down/status`.

A pid file records the pid and the process start time, so `stop` only ever signals a process this
supervisor started (a recycled pid belongs to someone else and is left alone). Next to it, a digest of each
part of what the process was started with (its command line, each variable of its environment, its rendered
config file): a component whose configuration changed since is restarted by `start`, and `changes` names what
changed, never a value.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import psutil
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

Probe = Callable[[], bool]

COMMAND_LINE, CONFIG_FILE = "command line", "config file"
NOT_RECORDED = "configuration not recorded"  # a process started before configurations were recorded


class StartError(RuntimeError):
    """A component did not become ready; the message names it and its log."""


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def describe_changes(changed: Sequence[str]) -> str:
    """`Supervisor.changes` in words: "RAGTRACE_LLM_BASE_URL changed"."""
    return "its configuration was not recorded" if list(changed) == [NOT_RECORDED] else f"{', '.join(changed)} changed"


@dataclass(frozen=True)
class Component:
    """One local process: how to run it and how to tell that it serves."""

    name: str
    port: int
    argv: list[str]
    ready: Probe
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[], None] | None = None  # first-start work, such as formatting storage
    start_timeout_s: float = 60.0
    config: Callable[[], str] | None = None  # the config file `prepare` writes, rendered now
    installs: tuple[str, ...] = ()  # the infra/local/install.sh components it runs from (`make up` installs them)
    # Not needed to answer searches with traces (logs, an exporter): on a fresh machine `make up` installs it in
    # the background once the stack answers, so the first start waits only for what answering needs.
    deferrable: bool = False

    def fingerprint(self) -> dict[str, str]:
        """A digest of each part of what the process is started with, by the name `changes` reports it under
        (digests, so that no secret is written down)."""
        parts: dict[str, object] = {COMMAND_LINE: self.argv, **self.env}
        if self.config is not None:
            parts[CONFIG_FILE] = self.config()
        return {name: _digest([name, value]) for name, value in parts.items()}


class State(StrEnum):
    UP = "up"
    DOWN = "down"
    UNHEALTHY = "unhealthy"  # our process is alive but does not answer its readiness probe


@dataclass(frozen=True)
class Status:
    name: str
    state: State
    port: int
    pid: int | None
    log: Path
    changed: tuple[str, ...] = ()  # what differs from what the running process was started with


def _started_at(pid: int) -> str | None:
    """When a live process started (psutil's create_time, as text), else None: with the pid, what tells our
    process from a later one that reuses its pid."""
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None  # a zombie has exited; only its entry is left
        return repr(process.create_time())
    except psutil.Error:
        return None


def _probe(component: Component) -> bool:
    try:
        return component.ready()
    except Exception:  # a probe that raises means "not ready yet", whatever the client's error type
        return False


class Supervisor:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.run_dir = state_dir / "run"
        self.log_dir = state_dir / "logs"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _pid_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _fingerprint_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.fingerprint.json"

    def _forget(self, name: str) -> None:
        self._pid_path(name).unlink(missing_ok=True)
        self._fingerprint_path(name).unlink(missing_ok=True)

    def pid(self, name: str) -> int | None:
        """The pid of our live process for this component, or None (a stale pid file is removed)."""
        path = self._pid_path(name)
        try:
            pid_text, started_at = path.read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_text)
        if _started_at(pid) == started_at:
            return pid
        self._forget(name)
        return None

    def changes(self, component: Component) -> list[str]:
        """What differs between the component now and what its running process was started with: the names of
        the variables, "command line", "config file"; empty when it runs as it would start now, or does not run."""
        if self.pid(component.name) is None:
            return []
        try:
            started: dict[str, str] = json.loads(self._fingerprint_path(component.name).read_text())
        except (OSError, ValueError):
            return [NOT_RECORDED]
        now = component.fingerprint()
        return sorted(name for name in started.keys() | now.keys() if started.get(name) != now.get(name))

    def status(self, component: Component) -> Status:
        pid = self.pid(component.name)
        state = State.DOWN if pid is None else State.UP if _probe(component) else State.UNHEALTHY
        changed = tuple(self.changes(component))
        return Status(component.name, state, component.port, pid, self.log_path(component.name), changed)

    def start(self, component: Component, report: Callable[[str], None] = lambda line: None) -> bool:
        """Start the component unless it already runs as it would start now: one whose configuration changed
        (`changes`) is restarted, and `report` given a line saying what changed. Wait until it is ready. True if
        it was (re)started."""
        changed = self.changes(component)
        if changed:
            report(f"{component.name}: restarting ({describe_changes(changed)})")
            self.stop(component)
        pid = self.pid(component.name)
        if pid is not None:
            self._wait_ready(component, pid)
            return False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if component.prepare is not None:
            component.prepare()
        log_path = self.log_path(component.name)
        with log_path.open("ab") as log:
            process = subprocess.Popen(  # noqa: S603 - argv comes from the component table, not user input
                component.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **component.env},
                start_new_session=True,  # own process group: stop() signals the whole group
            )
        started_at = _started_at(process.pid)
        self._fingerprint_path(component.name).write_text(json.dumps(component.fingerprint()))
        self._pid_path(component.name).write_text(f"{process.pid} {started_at}\n")
        try:
            self._wait_ready(component, process.pid, process)
        except StartError:
            self.stop(component)
            raise
        return True

    def _wait_ready(self, component: Component, pid: int, process: subprocess.Popen[bytes] | None = None) -> None:
        def ready() -> bool:
            if _probe(component):
                return True
            exited = process.poll() if process is not None else (None if _started_at(pid) else -1)
            if exited is not None:
                raise StartError(
                    f"{component.name} exited with code {exited} before it was ready; "
                    f"log: {self.log_path(component.name)}"
                )
            return False

        until_ready = Retrying(
            retry=retry_if_result(lambda is_ready: not is_ready),
            stop=stop_after_delay(component.start_timeout_s),
            wait=wait_fixed(0.2),
        )
        try:
            until_ready(ready)
        except RetryError:
            raise StartError(
                f"{component.name} was not ready on port {component.port} within {component.start_timeout_s:.0f}s; "
                f"log: {self.log_path(component.name)}"
            ) from None

    def stop(self, component: Component, timeout_s: float = 30.0) -> bool:
        """Stop our process for this component (TERM, then KILL after timeout_s). True if one was running."""
        pid = self.pid(component.name)
        if pid is None:
            return False
        started_at = _started_at(pid)

        def exited() -> bool:
            _reap(pid)
            return _started_at(pid) != started_at

        until_exited = Retrying(
            retry=retry_if_result(lambda has_exited: not has_exited),
            stop=stop_after_delay(timeout_s),
            wait=wait_fixed(0.1),
        )
        os.killpg(pid, signal.SIGTERM)
        try:
            until_exited(exited)
        except RetryError:
            os.killpg(pid, signal.SIGKILL)
            _reap(pid)
        self._forget(component.name)
        return True

    @contextlib.contextmanager
    def running(self, components: list[Component], together: bool = False) -> Iterator[None]:
        """The components started in order and running inside the block; those started are stopped after it,
        in reverse order, whatever happened (a start that fails stops the ones before it). `together`: they
        do not depend on each other, so they start at once and their waits until ready overlap."""
        started: list[Component] = []
        try:
            if together:
                with ThreadPoolExecutor(max(1, len(components))) as pool:
                    waits = [pool.submit(self.start, component) for component in components]
                started += components  # stopping one that never started is harmless
                for wait in waits:
                    wait.result()
            else:
                for component in components:
                    # Listed first: a start interrupted by something other than StartError (a test's timeout)
                    # leaves a process behind that must still be stopped; stopping one never started is harmless.
                    started.append(component)
                    self.start(component)
            yield
        finally:
            for component in reversed(started):
                self.stop(component)

    @contextlib.contextmanager
    def stopped(self, component: Component) -> Iterator[None]:
        """The component is down inside the block and running again after it, whatever happened inside."""
        self.stop(component)
        try:
            yield
        finally:
            self.start(component)


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
