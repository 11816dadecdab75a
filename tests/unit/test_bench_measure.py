"""The benchmarks' shared measurement helpers (ragtrace_tools/bench/measure.py): percentiles named by unit and
prefix, and results written as JSON and a Markdown table under the machine's description."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from ragtrace_tools.bench.measure import percentile, percentiles, write_results


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
