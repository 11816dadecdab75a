"""The benchmarks' shared measures (ragtrace_tools/bench/measure.py): percentiles (numpy's, nearest rank) named
by unit and prefix, a process's peak memory and CPU (psutil's) against a real process whose use is known, and
results written as JSON and a Markdown table under the machine's description."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import psutil
from tenacity import retry, retry_if_result, stop_after_delay, wait_fixed

from ragtrace_tools.bench.measure import ProcessSampler, machine_split, percentile, percentiles, write_results

# Writes 100 MiB, spins the CPU for half a second, then waits to be stopped.
BUSY = (
    "import time; block = b'x' * (100 * 2**20); end = time.process_time() + 0.5\n"
    "while time.process_time() < end: pass\n"
    "time.sleep(60)"
)


def test_a_percentile_is_the_nearest_of_the_values() -> None:
    values = [40.0, 10.0, 30.0, 20.0, 50.0]
    assert [percentile(values, q) for q in (0, 50, 90, 100)] == [10.0, 30.0, 50.0, 50.0]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 3.0, "one of the values (the even rank on a tie), not a mean"
    assert math.isnan(percentile([], 50))


def test_the_sampler_sees_a_process_s_peak_memory_and_cpu_time() -> None:
    process = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        with ProcessSampler({"busy": process.pid}) as sampler:
            _until_cpu_spent(process.pid, 0.5)
    finally:
        process.kill()
        process.wait()
    assert 100 <= sampler.peak_mib["busy"] < 300
    assert 0.3 <= sampler.cpu_s["busy"] <= 1.5
    assert set(sampler.machine_s) == {"busy", "idle", "steal"}
    assert sampler.machine_s["busy"] >= sampler.cpu_s["busy"] - 0.1, "the machine was at least as busy as it"


# The shape of psutil.cpu_times() on Linux.
CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")


def test_the_machine_split_counts_guest_time_once_and_io_wait_as_idle() -> None:
    start = CpuTimes(*[0.0] * len(CpuTimes._fields))
    end = start._replace(user=5.0, system=1.0, idle=3.0, iowait=1.0, steal=0.5, guest=2.0)
    assert machine_split(start, end) == {"busy": 6.0, "idle": 4.0, "steal": 0.5}


def _until_cpu_spent(pid: int, seconds: float) -> None:
    @retry(retry=retry_if_result(lambda spent: not spent), stop=stop_after_delay(20), wait=wait_fixed(0.05))
    def spent() -> bool:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system >= seconds

    spent()


def test_percentiles_are_nearest_rank_values_named_by_unit_and_prefix() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 … 1, unordered on purpose
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 100.0
    assert percentiles(values, "ms", 1) == {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}
    assert percentile(values, 99) == 99.0, "the 99th of 1..100 is 99, not the maximum"
    assert list(percentiles([0.12345], "s", 3, prefix="write_")) == ["write_p50_s", "write_p99_s"]
    assert percentiles([0.12345], "s", 3)["p50_s"] == 0.123


def test_results_are_written_as_json_and_a_markdown_table_under_the_machine(tmp_path: Path) -> None:
    results = {"date": "2026-12-06T10:00:00+00:00", "machine": {"cpu": "test-cpu", "versions": {"x": "1"}}, "v": 3}
    write_results(results, "ragtrace bench-test", ("measure", "value"), ["| speed | 3 /s |"], tmp_path, "-t", True)
    stem = f"2026-12-06-{platform.node() or 'machine'}-t"
    assert json.loads((tmp_path / f"{stem}.json").read_text()) == results
    markdown = (tmp_path / f"{stem}.md").read_text()
    assert markdown.startswith("# ragtrace bench-test, 2026-12-06T10:00:00Z\n")
    assert "Machine: cpu test-cpu" in markdown and "Versions: x 1" in markdown
    assert markdown.endswith("| measure | value |\n|---|---|\n| speed | 3 /s |\n")
    assert (tmp_path / "latest.md").read_text() == markdown


def test_a_second_run_of_the_day_is_written_beside_the_first(tmp_path: Path) -> None:
    first = {"date": "2026-12-06T10:00:00+00:00", "machine": {"cpu": "test-cpu"}, "v": 1}
    second = {**first, "date": "2026-12-06T14:05:09+00:00", "v": 2}
    for results in (first, second):
        write_results(results, "ragtrace bench-test", ("measure", "value"), ["| speed | 3 /s |"], tmp_path)
    stem = f"2026-12-06-{platform.node() or 'machine'}"
    assert json.loads((tmp_path / f"{stem}.json").read_text())["v"] == 1
    assert json.loads((tmp_path / f"{stem}-1405.json").read_text())["v"] == 2
    assert (tmp_path / f"{stem}-1405.md").read_text().startswith("# ragtrace bench-test, 2026-12-06T14:05:09Z")
