"""The bench's measures: percentiles (numpy's, nearest rank) and a process's peak memory and CPU (psutil's),
against a real process whose use is known."""

from __future__ import annotations

import math
import subprocess
import sys

import psutil
from tenacity import retry, retry_if_result, stop_after_delay, wait_fixed

from ragtrace_tools.bench import ProcessSampler, percentile

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


def _until_cpu_spent(pid: int, seconds: float) -> None:
    @retry(retry=retry_if_result(lambda spent: not spent), stop=stop_after_delay(20), wait=wait_fixed(0.05))
    def spent() -> bool:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system >= seconds

    spent()
