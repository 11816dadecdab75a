"""`ragtrace load-gen` for a few seconds against a running pipeline: summary, freshness, CSV and PNG."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from ragtrace_tools.loadgen import LoadGenError, LoadOptions, check, run
from tests.pipeline import API_KEY, Pipeline

SEARCHES = {f"POST /api/search [{mode}]" for mode in ("vector", "keyword", "hybrid")}


def test_a_short_run_reports_every_request_type_and_the_freshness(faiss_pipeline: Pipeline, tmp_path: Path) -> None:
    options = LoadOptions(
        ingest_url=faiss_pipeline.base_url,
        search_url=faiss_pipeline.search_url,
        api_key=API_KEY,
        users=3,
        spawn_rate=3,
        duration_s=8,
        ingest_weight=2,
        search_weight=3,
    )
    summary = run(options, tmp_path, Console(width=120, record=True))
    [folder] = tmp_path.iterdir()
    requests = {r["name"]: r for r in summary["requests"]}
    assert SEARCHES | {"POST /ingest", "Aggregated"} <= set(requests)
    assert requests["Aggregated"]["failures"] == 0
    assert requests["Aggregated"]["count"] == sum(r["count"] for n, r in requests.items() if n != "Aggregated")
    fresh = summary["freshness"]
    # Every accepted document; an ingest still in flight when the clock stopped is accepted but not counted.
    assert fresh["documents"] >= requests["POST /ingest"]["count"] > 0
    assert fresh["indexed"] == fresh["documents"] and 0 < fresh["p50_s"] <= fresh["max_s"] < 60
    with (folder / "load_stats_history.csv").open() as f:
        assert any(row["Name"] == "Aggregated" and float(row["Requests/s"]) > 0 for row in csv.DictReader(f))
    assert (folder / "load.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert API_KEY not in (folder / "summary.json").read_text()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"ingest_url": "http://192.0.2.10:8082"}, "not on this machine"),
        ({"users": 0}, "--users"),
        ({"duration_s": 7200}, "--duration"),
        ({"ingest_weight": 0, "search_weight": 0}, "not both 0"),
    ],
)
def test_runs_are_bounded_and_stay_on_this_machine_unless_told(change: dict[str, object], fragment: str) -> None:
    options = LoadOptions("http://127.0.0.1:8082", "http://localhost:8080", "key")
    check(options)
    with pytest.raises(LoadGenError, match=fragment):
        check(replace(options, **change))  # type: ignore[arg-type]
    if "ingest_url" in change:
        check(replace(options, allow_remote=True, **change))  # type: ignore[arg-type]
