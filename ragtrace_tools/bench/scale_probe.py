"""One search process of `ragtrace bench-scale` (scale.py runs it fresh for each measurement): it opens
the synthetic namespace as the search service would, without the bench's own imports (torch among them),
so that its resident memory is the store's."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ragtrace.vectorstore import VectorStore
from ragtrace.vectorstore.faiss_index import IndexPolicy
from ragtrace.vectorstore.faiss_store import FaissStore
from ragtrace_tools.synthetic import SyntheticCorpus

NAMESPACE = "scale"
CORPUS = SyntheticCorpus()
TOP_K = 10
ALPHA = 0.7
CONCURRENCY = (1, 8)
# A measurement stops starting searches after this long (at 1M chunks an exact search takes seconds), once it
# has at least MIN_REQUESTS.
BUDGET_S = 30.0
MIN_REQUESTS = 16


def memory_mib(field: str, pid: int | str = "self") -> int:
    """VmRSS (resident now) or VmHWM (resident at the peak) of a process (this one by default), MiB."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field))
    return round(int(line.split()[1]) / 1024)


async def latencies(call: Callable[[int], object], requests: int, concurrency: int) -> list[float | str]:
    """Milliseconds of each of up to `requests` calls (fewer past BUDGET_S), `concurrency` at a time, each in
    a thread as the search service calls the store; a call that fails is its error's type instead (Weaviate
    answers DEADLINE_EXCEEDED when it falls behind)."""
    measured: list[float | str] = []
    gate = asyncio.Semaphore(concurrency)
    begun = time.perf_counter()

    async def one(number: int) -> None:
        async with gate:
            if number >= MIN_REQUESTS and time.perf_counter() - begun > BUDGET_S:
                return
            started = time.perf_counter()
            try:
                await asyncio.to_thread(call, number)
            except Exception as error:  # counted and named in the results, not hidden
                measured.append(type(error).__name__)
                return
            measured.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(one(n) for n in range(requests)))
    return measured


def timed_searches(store: VectorStore, requests: int, keyword: bool) -> dict[str, Any]:
    """Each mode at each concurrency (keyword too when asked): (mode, concurrency, milliseconds) timings,
    and the top 10 of each vector query, for recall."""
    queries = [(text, vector.tolist()) for text, vector in CORPUS.queries(requests)]
    modes: dict[str, Callable[[int], object]] = {
        "vector": lambda n: store.search(NAMESPACE, queries[n][1], TOP_K),
        "hybrid": lambda n: store.hybrid_search(NAMESPACE, queries[n][0], queries[n][1], TOP_K, ALPHA),
    }
    if keyword:
        modes["keyword"] = lambda n: store.keyword_search(NAMESPACE, queries[n][0], TOP_K)
    timings = []
    for mode, call in modes.items():
        for warm_up in range(min(5, requests)):
            call(warm_up)
        for concurrency in CONCURRENCY:
            timings.append((mode, concurrency, asyncio.run(latencies(call, requests, concurrency))))
    top = [[hit.chunk_id for hit in store.search(NAMESPACE, vector, TOP_K)] for _, vector in queries]
    return {"timings": timings, "top": top}


def measure(data_dir: Path, approximate: bool, requests: int) -> dict[str, Any]:
    """Open the namespace with exact or approximate search, wait until its index is ready, then time the
    searches (keyword search, which no index changes, with exact only)."""
    store = FaissStore(data_dir, policy=IndexPolicy(approximate_above=0 if approximate else sys.maxsize))
    started = time.perf_counter()
    info = store.settle(NAMESPACE)
    ready_s = time.perf_counter() - started
    ready_mib = memory_mib("VmRSS")
    searched = timed_searches(store, requests, keyword=not approximate)
    store.close()
    return {
        "index": asdict(info),
        "ready_s": round(ready_s, 1),
        "rss_mib_ready": ready_mib,
        "rss_mib_peak": memory_mib("VmHWM"),
        **searched,
    }
