"""What every benchmark shares: percentiles, processes' peak memory and CPU time, the machine a run was on, and
its results written as a table (terminal) and as bench/results/<date>-<machine><suffix>.json and .md."""

from __future__ import annotations

import json
import os
import platform
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

console = Console()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, the nearest of the values (never one between two); NaN without values."""
    return float(np.percentile(values, q, method="nearest")) if len(values) else float("nan")


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            p: version(p) for p in ("ragtrace", "torch", "sentence-transformers", "faiss-cpu", "aiokafka", "grpcio")
        },
    }


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU time of a process so far."""
    times = process.cpu_times()
    return times.user + times.system


class ProcessSampler:
    """Peak resident memory (sampled every 0.2 s) and CPU seconds of the given processes while running: where
    the machine's time goes; and the whole machine's CPU seconds meanwhile, busy, idle and stolen by the
    hypervisor (`machine_s`), which says whether the processes could have had more."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak_mib: dict[str, float] = dict.fromkeys(pids, 0.0)
        self.cpu_s: dict[str, float] = {}
        self.machine_s: dict[str, float] = {}
        self._start_cpu: dict[str, float] = {}
        self._start_machine = psutil.cpu_times()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for name, process in self.processes.items():
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self.peak_mib[name] = max(self.peak_mib[name], rss / 2**20)

    def __enter__(self) -> ProcessSampler:
        self._start_cpu = {name: cpu_seconds(process) for name, process in self.processes.items()}
        self._start_machine = psutil.cpu_times()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_s = {
            name: round(cpu_seconds(process) - self._start_cpu[name], 1) for name, process in self.processes.items()
        }
        self.machine_s = machine_split(self._start_machine, psutil.cpu_times())


def machine_split(start: Any, end: Any) -> dict[str, float]:
    """All cores' seconds between two psutil.cpu_times(): busy, idle (waiting on I/O included) and steal."""
    spent = {field: getattr(end, field) - getattr(start, field) for field in end._fields}
    idle = spent.pop("idle") + spent.pop("iowait", 0.0)
    steal = spent.pop("steal", 0.0)
    for counted_in_user in ("guest", "guest_nice"):  # Linux counts guest time in user time too
        spent.pop(counted_in_user, None)
    return {"busy": round(sum(spent.values()), 2), "idle": round(idle, 2), "steal": round(steal, 2)}


def percentiles(values: Sequence[float], unit: str, digits: int, prefix: str = "") -> dict[str, float]:
    """p50 and p99 of the values, rounded: {"<prefix>p50_<unit>": ..., "<prefix>p99_<unit>": ...}."""
    return {f"{prefix}p{q}_{unit}": round(percentile(values, q), digits) for q in (50, 99)}


def new_results(**measured: Any) -> dict[str, Any]:
    """A run's results: when, on what machine, then what it measured."""
    return {"date": datetime.now(UTC).isoformat(), "machine": machine(), **measured}


def write_results(
    results: dict[str, Any],
    title: str,
    columns: tuple[str, ...],
    rows: list[str],
    output_dir: Path,
    suffix: str = "",
    latest: bool = False,
) -> None:
    """Print the Markdown table rows as a terminal table; write <date>-<machine><suffix>.json and .md (the
    machine described at the top; `-<HHMM>` added when a run of the same day wrote those), and the Markdown to
    latest.md too when asked."""
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*[cell.strip() for cell in row.strip("|").split("|")])
    console.print(table)
    markdown = (
        "\n".join(
            [
                f"# {title}, {results['date'][:19]}Z",
                "",
                "Machine: " + ", ".join(f"{k} {v}" for k, v in results["machine"].items() if k != "versions"),
                "",
                "Versions: " + ", ".join(f"{k} {v}" for k, v in results["machine"].get("versions", {}).items()),
                "",
                "| " + " | ".join(columns) + " |",
                "|" + "---|" * len(columns),
                *rows,
            ]
        )
        + "\n"
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{results['date'][:10]}-{platform.node() or 'machine'}{suffix}"
    if (output_dir / f"{stem}.json").exists():  # an earlier run of the day is kept: this one gets its time
        stem += "-" + results["date"][11:16].replace(":", "")
    (output_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (output_dir / f"{stem}.md").write_text(markdown)
    if latest:
        (output_dir / "latest.md").write_text(markdown)
    console.print(f"written to {output_dir / stem}.json and .md")
