"""`ragtrace load-gen`: Locust, headless, against the ingest and search APIs, then a report.

Locust runs locustfile.py in its own process for a bounded time; meanwhile a progress bar shows the requests
so far. Afterwards: a summary per request type (count, failures, RPS, p50/p95/p99), the ingestion freshness
of every document the run ingested (accepted → indexed, from the documents' own status records), Locust's
CSV files and a PNG of throughput and latency over time, all in one folder per run.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ragtrace.ingest_client import IngestClient, NotSettled
from ragtrace_tools.bench.measure import percentile

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MAX_USERS = 200
MAX_DURATION_S = 3600
FRESHNESS_WAIT_S = 120.0


@dataclass(frozen=True)
class LoadOptions:
    ingest_url: str
    search_url: str
    api_key: str
    users: int = 4
    spawn_rate: float = 2.0
    duration_s: int = 60
    ingest_weight: int = 1
    search_weight: int = 4
    generate: bool = False
    allow_remote: bool = False


class LoadGenError(ValueError):
    """The run cannot start as asked: the message says why."""


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check(options: LoadOptions) -> None:
    if not 1 <= options.users <= MAX_USERS:
        raise LoadGenError(f"--users: between 1 and {MAX_USERS}")
    if not 1 <= options.duration_s <= MAX_DURATION_S:
        raise LoadGenError(f"--duration: between 1 and {MAX_DURATION_S} seconds")
    if options.ingest_weight < 0 or options.search_weight < 0 or options.ingest_weight + options.search_weight == 0:
        raise LoadGenError("--ingest-weight/--search-weight: non-negative, not both 0")
    for url in (options.ingest_url, options.search_url):
        if not options.allow_remote and not _is_loopback(url):
            raise LoadGenError(f"{url} is not on this machine; pass --allow-remote to load a remote system")


def _locust_env(options: LoadOptions, namespace: str, documents_file: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RAGTRACE_LOADGEN_INGEST_URL": options.ingest_url,
        "RAGTRACE_LOADGEN_SEARCH_URL": options.search_url,
        "RAGTRACE_LOADGEN_API_KEY": options.api_key,
        "RAGTRACE_LOADGEN_NAMESPACE": namespace,
        "RAGTRACE_LOADGEN_DOCUMENTS": str(documents_file),
        "RAGTRACE_LOADGEN_GENERATE": "1" if options.generate else "0",
        "RAGTRACE_LOADGEN_INGEST_WEIGHT": str(options.ingest_weight),
        "RAGTRACE_LOADGEN_SEARCH_WEIGHT": str(options.search_weight),
    }


def _latest_totals(history: Path) -> tuple[int, int, float]:
    """(requests, failures, current RPS) from the last aggregated row Locust has written so far."""
    if not history.exists():
        return 0, 0, 0.0
    with history.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]
    if not rows:
        return 0, 0, 0.0
    last = rows[-1]
    return int(last["Total Request Count"]), int(last["Total Failure Count"]), float(last["Requests/s"])


def _run_locust(options: LoadOptions, output: Path, namespace: str, console: Console) -> None:
    argv = [
        sys.executable,
        "-m",
        "locust",
        "--locustfile",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(options.users),
        "--spawn-rate",
        str(options.spawn_rate),
        "--run-time",
        f"{options.duration_s}s",
        "--stop-timeout",
        "10",
        "--csv",
        str(output / "load"),
        "--csv-full-history",
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    env = _locust_env(options, namespace, output / "documents.json")
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[live]}"), TimeRemainingColumn())
    with (output / "locust.log").open("w") as log, Progress(*columns, console=console) as progress:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        task = progress.add_task(f"load ({options.users} users)", total=options.duration_s, live="seeding")
        started = time.monotonic()
        deadline = started + options.duration_s + 180  # seeding and the stop grace on top of the run
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                raise LoadGenError(f"Locust did not stop in time; see {output / 'locust.log'}")
            requests, failures, rps = _latest_totals(output / "load_stats_history.csv")
            live = f"{requests} requests, {failures} failures, {rps:.1f} req/s" if requests else "seeding"
            progress.update(task, completed=min(time.monotonic() - started, options.duration_s), live=live)
            time.sleep(0.5)
        progress.update(task, completed=options.duration_s)
    if process.returncode != 0 and not (output / "load_stats.csv").exists():
        raise LoadGenError(f"Locust failed (exit {process.returncode}); see {output / 'locust.log'}")


@dataclass(frozen=True)
class RequestSummary:
    name: str
    count: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def _milliseconds(cell: str) -> float:
    """A percentile cell of Locust's CSV: a number, or N/A before any request of that type finished."""
    return float(cell) if cell not in ("", "N/A") else float("nan")


def summarize(stats_csv: Path) -> list[RequestSummary]:
    with stats_csv.open() as f:
        return [
            RequestSummary(
                name=row["Name"],
                count=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                rps=float(row["Requests/s"]),
                p50_ms=_milliseconds(row["50%"]),
                p95_ms=_milliseconds(row["95%"]),
                p99_ms=_milliseconds(row["99%"]),
            )
            for row in csv.DictReader(f)
        ]


def freshness(ingest_url: str, api_key: str, namespace: str, document_ids: list[str]) -> dict[str, Any]:
    """Accepted → indexed of each document the run ingested, waiting up to FRESHNESS_WAIT_S for stragglers."""
    with IngestClient(ingest_url, api_key, timeout=10) as client:
        try:
            settled, pending = client.wait_until_settled(namespace, document_ids, timeout_s=FRESHNESS_WAIT_S), []
        except NotSettled as late:
            settled, pending = late.settled, late.pending
    seconds = [
        (datetime.fromisoformat(s["indexed_at"]) - datetime.fromisoformat(s["accepted_at"])).total_seconds()
        for s in settled.values()
        if s["status"] == "indexed"
    ]
    return {
        "documents": len(document_ids),
        "indexed": len(seconds),
        "failed": sum(s["status"] == "failed" for s in settled.values()),
        "not_indexed_in_time": len(pending),
        "p50_s": percentile(seconds, 50),
        "p95_s": percentile(seconds, 95),
        "p99_s": percentile(seconds, 99),
        "max_s": max(seconds, default=float("nan")),
    }


def plot(history_csv: Path, output_png: Path) -> None:
    """Throughput (with users) and p50/p95 latency per request type over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with history_csv.open() as f:
        rows = [r for r in csv.DictReader(f)]
    start = min(int(r["Timestamp"]) for r in rows)
    figure, (throughput, latency) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    total = [r for r in rows if r["Name"] == "Aggregated"]
    elapsed = [int(r["Timestamp"]) - start for r in total]
    throughput.plot(elapsed, [float(r["Requests/s"]) for r in total], label="requests/s")
    throughput.plot(elapsed, [float(r["Failures/s"]) for r in total], label="failures/s", color="tab:red")
    users = throughput.twinx()
    users.plot(elapsed, [int(r["User Count"]) for r in total], label="users", color="tab:gray", linestyle=":")
    users.set_ylabel("users")
    throughput.set_ylabel("per second")
    throughput.legend(loc="upper left")
    for name in sorted({r["Name"] for r in rows} - {"Aggregated"}):
        series = [r for r in rows if r["Name"] == name]
        times = [int(r["Timestamp"]) - start for r in series]
        (line,) = latency.plot(times, [_milliseconds(r["95%"]) for r in series], label=f"{name} p95")
        p50 = [_milliseconds(r["50%"]) for r in series]
        latency.plot(times, p50, color=line.get_color(), linestyle="--", linewidth=0.8)
    latency.set_ylabel("ms (solid p95, dashed p50)")
    latency.set_xlabel("seconds since start")
    latency.legend(loc="upper left", fontsize="small")
    figure.suptitle("ragtrace load-gen: throughput and latency")
    figure.tight_layout()
    figure.savefig(output_png, dpi=100)
    plt.close(figure)


def _print_report(console: Console, rows: list[RequestSummary], fresh: dict[str, Any], output: Path) -> None:
    table = Table("request", "count", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms", title="load-gen summary")
    for r in rows:
        style = "bold" if r.name == "Aggregated" else ""
        failures = f"[red]{r.failures}[/]" if r.failures else "0"
        table.add_row(
            escape(r.name),
            str(r.count),
            failures,
            f"{r.rps:.2f}",
            f"{r.p50_ms:.0f}",
            f"{r.p95_ms:.0f}",
            f"{r.p99_ms:.0f}",
            style=style,
        )
    console.print(table)
    lost = fresh["failed"] + fresh["not_indexed_in_time"]
    console.print(
        f"freshness (accepted → indexed) of {fresh['indexed']}/{fresh['documents']} documents: "
        f"p50 {fresh['p50_s']:.2f} s, p95 {fresh['p95_s']:.2f} s, p99 {fresh['p99_s']:.2f} s, "
        f"max {fresh['max_s']:.2f} s"
        + (f"; [red]{fresh['failed']} failed, {fresh['not_indexed_in_time']} not indexed in time[/]" if lost else "")
    )
    console.print(f"files: {output}/ (summary.json, load_stats.csv, load_stats_history.csv, load.png, locust.log)")


def run(options: LoadOptions, results_dir: Path, console: Console | None = None) -> dict[str, Any]:
    """One load run; returns the summary it also writes to <results_dir>/<timestamp>/summary.json."""
    check(options)
    console = console or Console()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = results_dir / stamp
    output.mkdir(parents=True, exist_ok=True)
    namespace = f"loadgen-{stamp.lower()}"
    _run_locust(options, output, namespace, console)
    rows = summarize(output / "load_stats.csv")
    documents_file = output / "documents.json"
    document_ids = json.loads(documents_file.read_text()) if documents_file.exists() else []
    with console.status(f"waiting for {len(document_ids)} ingested documents to be indexed"):
        fresh = freshness(options.ingest_url, options.api_key, namespace, document_ids)
    plot(output / "load_stats_history.csv", output / "load.png")
    summary = {
        "options": {**asdict(options), "api_key": "(hidden)"},
        "namespace": namespace,
        "requests": [asdict(r) for r in rows],
        "freshness": fresh,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_report(console, rows, fresh, output)
    return summary
