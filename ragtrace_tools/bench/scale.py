"""`ragtrace bench-scale` (`make bench-scale`): how the FAISS backend's search cost grows with a namespace.

One synthetic namespace (ragtrace_tools/synthetic.py says how its vectors and texts are made) grows through
the store's own write path in a work folder to each size in turn (10k, 100k, 1M chunks by default). At each
size a fresh process, standing for the search service without its gRPC hop (that hop is `make bench`'s),
opens the namespace once with exact search and once with approximate search (IVF, nprobe calibrated by the
store), and measures:
- the time until its index is ready, and the approximate index's build time;
- p50/p99 of vector, keyword and hybrid searches (top 10) at concurrency 1 and 8 (200 each, fewer where
  they take over 30 s, as exact search at 1M chunks does: the JSON has the count), called through
  `asyncio.to_thread` as the search service calls the store; keyword search does not depend on the index, so
  it is measured once. Hybrid is two dense searches (the query, then the query expanded by feedback), one
  BM25 search, the fusion and the rows read: the parts are the vector and keyword rows;
- recall@10 of approximate against exact search on the same queries (not the store's calibration queries);
- the process's resident memory once the index is ready, and its peak.
Results: a table, and bench/results/<date>-<machine>-scale.json and .md with the machine's description.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ragtrace.settings import WeaviateSettings
from ragtrace.vectorstore import VectorStore
from ragtrace.vectorstore.faiss_store import SAVED_INDEX_SUFFIX, FaissStore
from ragtrace.vectorstore.weaviate_store import WeaviateStore
from ragtrace_tools.bench.measure import console, new_results, percentiles, write_results
from ragtrace_tools.bench.scale_probe import CONCURRENCY, CORPUS, NAMESPACE, measure, memory_mib, timed_searches
from ragtrace_tools.devstack.servers import LocalServers, StackPorts
from ragtrace_tools.devstack.supervisor import Supervisor

BATCH_CHUNKS = 10_000  # chunks generated at a time (chunk i is the same for every backend)
# Documents per write: one SQLite transaction for FAISS; for Weaviate 50 chunks, which its client's 2 s write
# deadline allows on a loaded 2-core machine (250 did not, 2026-12-02).
FAISS_WRITE_DOCUMENTS = 1_000
WEAVIATE_WRITE_DOCUMENTS = 5


def grow(store: VectorStore, start: int, stop: int, documents_per_write: int = FAISS_WRITE_DOCUMENTS) -> float:
    """Write chunks start..stop into the namespace, with a progress bar; seconds taken."""
    started = time.perf_counter()
    columns = (TextColumn("writing chunks"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("write", total=stop, completed=start)
        for batch in CORPUS.batches(start, stop, BATCH_CHUNKS):
            for first in range(0, len(batch), documents_per_write):
                written = batch[first : first + documents_per_write]
                store.write(NAMESPACE, written, [])
                progress.advance(task, sum(len(document.chunks) for document in written))
    return time.perf_counter() - started


def _in_fresh_process(data_dir: Path, approximate: bool, requests: int) -> dict[str, Any]:
    """`measure` in a new process (spawned: nothing of this one's memory), its latencies as p50/p99."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return _with_percentiles(pool.submit(measure, data_dir, approximate, requests).result())


def _with_percentiles(measured: dict[str, Any]) -> dict[str, Any]:
    measured["latency"] = [
        {
            "mode": mode,
            "concurrency": concurrency,
            "requests": len(timings),
            "errors": sorted(t for t in timings if isinstance(t, str)),
            **percentiles([t for t in timings if not isinstance(t, str)], "ms", 2),
        }
        for mode, concurrency, timings in measured.pop("timings")
    ]
    return measured


def recall(found: Sequence[Sequence[str]], exact: Sequence[Sequence[str]]) -> float:
    hits = sum(len(set(f) & set(e)) for f, e in zip(found, exact, strict=True))
    return round(hits / max(1, sum(len(e) for e in exact)), 4)


def weaviate_rows(sizes: Sequence[int], requests: int, work_dir: Path, exact_top: dict[int, Any]) -> list[Any]:
    """The same namespace grown in Weaviate (the local binary on free ports, its default HNSW and BM25) and
    the same searches through WeaviateStore, in this process: latencies, recall@10 against FAISS's exact
    search, the server's resident memory."""
    state_dir = work_dir / "weaviate"
    shutil.rmtree(state_dir, ignore_errors=True)
    servers = LocalServers(state_dir, StackPorts.free())
    supervisor = Supervisor(state_dir)
    settings = WeaviateSettings(
        http_port=servers.ports.weaviate_http,
        grpc_port=servers.ports.weaviate_grpc,
        api_key=servers.secrets.weaviate_api_key,
    )
    rows, written = [], 0
    with supervisor.running([servers.weaviate()]):
        store = WeaviateStore(settings, "ScaleBench")
        try:
            for size in sorted(sizes):
                console.print(f"[bold]Weaviate, {size:,} chunks[/]")
                write_rate = (size - written) / grow(store, written, size, WEAVIATE_WRITE_DOCUMENTS)
                written = size
                with console.status(f"Weaviate search at {size:,} chunks"):
                    measured = _with_percentiles(timed_searches(store, requests, keyword=True))
                pid = supervisor.pid("weaviate") or 0
                measured.update(rss_mib_ready=memory_mib("VmRSS", pid), rss_mib_peak=memory_mib("VmHWM", pid))
                measured["recall_at_10"] = recall(measured.pop("top"), exact_top[size])
                rows.append({"chunks": size, "write_chunks_per_s": round(write_rate), **measured})
        finally:
            store.close()
    shutil.rmtree(state_dir, ignore_errors=True)
    return rows


def run(
    sizes: Sequence[int], requests: int, work_dir: Path, keep: bool, output_dir: Path, weaviate: Sequence[int]
) -> dict[str, Any]:
    data_dir = work_dir / "index"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    store = FaissStore(data_dir)  # writes only: its index is never built here
    rows: list[dict[str, Any]] = []
    exact_top: dict[int, Any] = {}
    written = 0
    try:
        for size in sorted(sizes):
            console.print(f"[bold]{size:,} chunks[/]")
            write_s = grow(store, written, size)
            row: dict[str, Any] = {
                "chunks": size,
                "write_chunks_per_s": round((size - written) / write_s),
                "sqlite_mib": round(sum(p.stat().st_size for p in data_dir.glob(f"{NAMESPACE}.sqlite*")) / 2**20),
            }
            written = size
            for kind, approximate in (("exact", False), ("approximate", True)):
                # A fresh build each time: the approximate index saved at the last size is not reused.
                for saved in data_dir.glob(f"*{SAVED_INDEX_SUFFIX}"):
                    saved.unlink()
                with console.status(f"{kind} search at {size:,} chunks"):
                    row[kind] = _in_fresh_process(data_dir, approximate, requests)
            exact_top[size] = row["exact"].pop("top")
            row["recall_at_10"] = recall(row["approximate"].pop("top"), exact_top[size])
            rows.append(row)
            console.print(_lines([row])[-1])
    finally:
        store.close()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    results = new_results(
        corpus=asdict(CORPUS),
        requests_per_measurement=requests,
        sizes=rows,
        weaviate=weaviate_rows(weaviate, requests, work_dir, exact_top) if weaviate else [],
    )
    _report(results, output_dir)
    return results


def _latency_cell(measured: dict[str, Any], mode: str) -> str:
    by_concurrency = {r["concurrency"]: r for r in measured["latency"] if r["mode"] == mode}
    cells = []
    for concurrency in CONCURRENCY:
        row = by_concurrency[concurrency]
        failed = f" ({len(row['errors'])} of {row['requests']} failed: {row['errors'][0]})" if row["errors"] else ""
        cells.append(f"{row['p50_ms']} / **{row['p99_ms']}**{failed}")
    return " / ".join(cells)


def _lines(rows: Sequence[dict[str, Any]], rows_weaviate: Sequence[dict[str, Any]] = ()) -> list[str]:
    lines = []
    for row in rows:
        exact, approximate = row["exact"], row["approximate"]
        index = approximate["index"]
        for kind, measured in (("exact", exact), ("approximate", approximate)):
            described = (
                "flat"
                if kind == "exact"
                else f"IVF {index['cells']} cells, nprobe {index['nprobe']}, built in {index['build_s']} s, "
                f"recall@10 {row['recall_at_10']}"
            )
            lines.append(
                f"| {row['chunks']:,} | {kind} ({described}) | {_latency_cell(measured, 'vector')} | "
                f"{_latency_cell(exact, 'keyword')} | {_latency_cell(measured, 'hybrid')} | "
                f"{measured['rss_mib_ready']} / {measured['rss_mib_peak']} | {measured['ready_s']} |"
            )
    for row in rows_weaviate:
        lines.append(
            f"| {row['chunks']:,} | Weaviate (HNSW, recall@10 {row['recall_at_10']}) | "
            f"{_latency_cell(row, 'vector')} | {_latency_cell(row, 'keyword')} (Weaviate's BM25) | "
            f"{_latency_cell(row, 'hybrid')} | "
            f"{row['rss_mib_ready']} / {row['rss_mib_peak']} (server) | |"
        )
    return lines


def _report(results: dict[str, Any], output_dir: Path) -> None:
    columns = (
        "chunks",
        "index",
        "vector p50 / p99 ms, c1 / c8",
        "keyword (BM25) p50 / p99 ms, c1 / c8",
        "hybrid p50 / p99 ms, c1 / c8",
        "RSS MiB ready / peak",
        "ready s",
    )
    lines = _lines(results["sizes"], results["weaviate"])
    write_results(results, "ragtrace bench-scale", columns, lines, output_dir, suffix="-scale")
