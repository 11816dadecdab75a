"""`ragtrace drill` (`make drill`): failure drills against a running stack, each printed as what was done,
what is expected, what was observed and a verdict.

- burst: 32 clients search at once; the latency on top of an idle search is time spent queueing.
- long prompt: a question with a long prompt; time to first token from the LLM (vLLM when the stack has it).
- restart: the indexer worker is restarted while a document waits on Kafka; recovery is read on its metrics
  (the index-size series is back at start) and on that document becoming searchable.
- vector store down: the vector path's network dependency is stopped (Weaviate on that backend, otherwise the
  embedding service the FAISS search needs for query vectors); the RAG API must answer 503 naming it, fast.

Every drill puts back what it stopped, whatever happens.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from ragtrace.ingest_client import Document
from ragtrace_tools.bench.measure import percentile
from ragtrace_tools.devstack.supervisor import Component, Supervisor
from ragtrace_tools.evaluation import Client, EvalSet

console = Console()

CORPUS = {
    "lighthouse": "Lighthouses guide ships with a light on a tower; the Fresnel lens made their beams visible far out.",
    "tides": "Tides rise and fall twice a day because the Moon's gravity pulls the oceans towards it.",
    "glaciers": "Glaciers are rivers of ice that carve valleys as they slide slowly downhill under their own weight.",
}
BURST_CLIENTS, BURST_REQUESTS = 32, 4


@dataclass(frozen=True)
class Outcome:
    drill: str
    expected: str
    observed: str
    passed: bool


@dataclass
class Target:
    """The running stack as the drills see it."""

    ingest_url: str
    search_url: str
    api_key: str
    backend: str
    supervisor: Supervisor
    components: Mapping[str, Component]
    indexer_metrics_url: str


class Drills:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.namespace = "drill-" + uuid.uuid4().hex[:8]
        self.client = Client(target.ingest_url, target.search_url, target.api_key, self.namespace)

    async def search(self, **body: Any) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = await self.client.http.post(
            f"{self.target.search_url}/api/search", json={"namespace": self.namespace, "generate": False, **body}
        )
        return response, time.monotonic() - started

    async def prepare(self) -> None:
        corpus = EvalSet("drill", {d: {"title": d, "text": t} for d, t in CORPUS.items()}, {}, {})
        await self.client.index(corpus)

    async def burst(self) -> Outcome:
        idle = [(await self.search(query=f"how do tides work {i}"))[1] for i in range(8)]

        async def client(number: int) -> list[tuple[int, float]]:
            results = []
            for request in range(BURST_REQUESTS):
                response, elapsed = await self.search(query=f"lighthouse lens {number} {request}")
                results.append((response.status_code, elapsed))
            return results

        answers = [a for batch in await asyncio.gather(*(client(n) for n in range(BURST_CLIENTS))) for a in batch]
        errors = sum(1 for code, _ in answers if code != 200)
        latencies = [elapsed for _, elapsed in answers]
        p50, p99, idle_p50 = percentile(latencies, 50), percentile(latencies, 99), percentile(idle, 50)
        return Outcome(
            f"burst: {BURST_CLIENTS} clients x {BURST_REQUESTS} searches",
            "no errors; p99 under 5 s",
            f"{len(answers)} requests, {errors} errors; idle p50 {idle_p50 * 1000:.0f} ms, burst p50/p99 "
            f"{p50 * 1000:.0f}/{p99 * 1000:.0f} ms: about {max(0.0, p50 - idle_p50) * 1000:.0f} ms queueing",
            errors == 0 and p99 < 5.0,
        )

    async def long_prompt(self) -> Outcome:
        long_question = "Explain, step by step and citing the sources, " + "how lighthouses and tides relate; " * 40
        short, _ = await self.search(query="what is a lighthouse", generate=True, max_tokens=32)
        long, _ = await self.search(query=long_question[:2000], generate=True, max_tokens=32)
        if short.status_code != 200 or long.status_code != 200:
            return Outcome("long prompt", "answered", f"HTTP {short.status_code}/{long.status_code}", False)
        first, second = short.json()["metadata"], long.json()["metadata"]
        generator = f"{second['generator']} ({second['model'] or 'no model'})"
        if second["generator"] != "llm":
            observed = f"no LLM answered ({generator}: {second['generator_reason']}): extractive answers only"
            return Outcome("long prompt", "answered; first token within 5 s", observed, bool(long.json()["answer"]))
        ttft_short, ttft_long = first["time_to_first_token_ms"], second["time_to_first_token_ms"]
        return Outcome(
            "long prompt",
            "answered; first token within 5 s",
            f"{generator}: time to first token {ttft_short:.0f} ms short, {ttft_long:.0f} ms with "
            f"{second['input_tokens']} prompt tokens",
            0 < ttft_long < 5000,
        )

    async def restart(self) -> Outcome:
        component = self.target.components["indexer-worker"]
        supervisor = self.target.supervisor
        document_id = "during-restart-" + uuid.uuid4().hex[:6]
        await asyncio.to_thread(supervisor.stop, component)
        try:
            text = "Accepted while the indexer restarts: auroras glow."
            await self.client.documents.ingest(self.namespace, Document(text, "restart", document_id))
        finally:
            started = time.monotonic()
            await asyncio.to_thread(supervisor.start, component)
        metrics_back = time.monotonic() - started
        series = (await self.client.http.get(self.target.indexer_metrics_url)).text
        gauge = f'ragtrace_index_chunks{{backend="{self.target.backend}",namespace="{self.namespace}"}}' in series
        await self.client.documents.wait_until_settled(self.namespace, [document_id])
        indexed_after = time.monotonic() - started
        hits, _ = await self.search(query="auroras glow", mode="keyword")
        found = any(s["document_id"] == document_id for s in hits.json().get("sources", []))
        return Outcome(
            "restart: indexer worker, a document waiting on Kafka",
            "metrics back with every namespace's index size; the waiting document searchable within 30 s",
            f"metrics back after {metrics_back:.1f} s (index size series {'present' if gauge else 'MISSING'}); "
            f"document indexed {indexed_after:.1f} s after the restart, {'found' if found else 'NOT found'} by search",
            gauge and found and indexed_after < 30,
        )

    async def vector_store_down(self) -> Outcome:
        dependency = "weaviate" if self.target.backend == "weaviate" else "embedding-service"
        query = "glaciers carving valleys " + uuid.uuid4().hex  # not in any cache
        with self.target.supervisor.stopped(self.target.components[dependency]):
            down, elapsed = await self.search(query=query, mode="vector")
        back, _ = await self.search(query=query, mode="vector")
        named = down.status_code == 503 and down.json().get("dependency") == dependency
        return Outcome(
            f"vector store down: {dependency} stopped",
            f"503 naming {dependency} within 1 s; searches answer again once it is back",
            f"HTTP {down.status_code} naming {down.json().get('dependency')!r} in {elapsed * 1000:.0f} ms; "
            f"HTTP {back.status_code} after it came back",
            named and elapsed < 1.0 and back.status_code == 200,
        )


async def run_drills(target: Target) -> list[Outcome]:
    drills = Drills(target)
    try:
        await drills.prepare()
        steps: list[Callable[[], Awaitable[Outcome]]] = [
            drills.burst,
            drills.long_prompt,
            drills.restart,
            drills.vector_store_down,
        ]
        return [await step() for step in steps]
    finally:
        await drills.client.documents.aclose()


def report(outcomes: list[Outcome]) -> None:
    table = Table("drill", "expected", "observed", "verdict", show_lines=True)
    for o in outcomes:
        table.add_row(o.drill, o.expected, o.observed, "[green]pass[/]" if o.passed else "[red]FAIL[/]")
    console.print(table)
