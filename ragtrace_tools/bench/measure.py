"""What every benchmark shares: percentiles, the machine a run was on, and its results written as a table
(terminal) and as bench/results/<date>-<machine><suffix>.json and .md."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    )
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            p: version(p) for p in ("ragtrace", "torch", "sentence-transformers", "faiss-cpu", "aiokafka", "grpcio")
        },
    }


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
    machine described at the top), and the Markdown to latest.md too when asked."""
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
    (output_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (output_dir / f"{stem}.md").write_text(markdown)
    if latest:
        (output_dir / "latest.md").write_text(markdown)
    console.print(f"written to {output_dir / stem}.json and .md")
