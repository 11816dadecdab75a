"""`ragtrace bench` (`make bench`): speed of the running local stack, as ratios measured in one run.

1. Indexing: N passages through POST /ingest/batch, and N others one request each through POST /ingest,
   chunks/s from the first accept to the last indexed (server timestamps), against the bare model encoding
   the same chunks on the same device (best batch size) and ragtrace's own engine called bare; the batch path
   and the bare models in alternating rounds, each at its median.
2. Freshness: accepted → indexed, p50/p99, at steady ingest rates.
3. Search without generation over HTTP, p50/p99 per mode and concurrency, on the cache-miss path (every
   query unique), against the bare cost in this process (embed the query + search the same index); and the
   cache hit (one query again), the path's own floor.
4. Peak RSS and CPU seconds of each process of the stack during (1): where the time goes, per chunk against
   what the indexing targets allow (cpu_budget).
5. Bucket events on the idle stack: an object written to the watched bucket → its document found by a search,
   and its delete → gone from results, p50/p99, one object at a time (ingest/inbox.py).
6. The peer: what a user would build instead of the query path, on the same chunks and vectors: the query
   encoded in the client process by ragtrace's engine, then Weaviate's own hybrid query (weaviate_peer).
Results: a table, and bench/results/<date>-<machine>.json and .md with the machine's description.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from minio import Minio
from tenacity import AsyncRetrying, Retrying, retry_if_result, stop_after_delay, wait_fixed
from weaviate.classes.query import HybridFusion

from embedding.engine import EmbeddingEngine
from embedding.settings import EmbeddingSettings
from query.settings import SearchSettings
from ragtrace.ingest_client import AsyncIngestClient, Document
from ragtrace.schemas import chunk_id
from ragtrace.settings import WeaviateSettings
from ragtrace.vectorstore import DocumentChunks, IndexedChunk
from ragtrace.vectorstore.weaviate_store import WeaviateStore
from ragtrace_tools.bench.measure import ProcessSampler, console, new_results, percentiles, write_results
from ragtrace_tools.evaluation import EvalSet

# The machine's speed drifts within minutes (a shared VM: the bare torch model measured 48 and 35 chunks/s at
# one batch size a minute apart), so the pipeline and the bare models run in alternating rounds and each is
# taken at its median; one pipeline run against the best of one sweep of batch sizes set a single sample
# against the luckiest of four.
INDEXING_ROUNDS = 3
# Passages through the batch path before the measured rounds, as the bare models embed a few texts first: a stack
# just started is cold (measured: 60 chunks/s in its first 1,000 passages, then 85 and 76).
WARM_UP_DOCUMENTS = 300
BARE_BATCH_SIZES = (16, 32, 64, 128)


@dataclass
class Bench:
    ingest_url: str
    search_url: str
    api_key: str
    results: dict[str, Any] = field(default_factory=dict)

    def client(self) -> AsyncIngestClient:
        return AsyncIngestClient(self.ingest_url, self.api_key, limits=httpx.Limits(max_connections=64))

    @staticmethod
    def _documents(passages: dict[str, str]) -> list[Document]:
        return [Document(text, f"bench {document_id}", document_id) for document_id, text in passages.items()]

    @staticmethod
    async def _settled(client: AsyncIngestClient, namespace: str, ids: list[str]) -> list[dict[str, Any]]:
        """The documents' statuses once all are settled. The last accepted is waited for first: while the
        pipeline works, the bench asks about one document per interval rather than about each as it settles,
        so its own status reads (an API request and a MinIO read each) do not load what it measures."""
        await client.wait_until_settled(namespace, ids[-1:])
        return list((await client.wait_until_settled(namespace, ids)).values())

    async def indexing(
        self, passages: dict[str, str], batched: bool = True, sampler: ProcessSampler | None = None
    ) -> dict[str, Any]:
        """Through the batch endpoint, or (`batched` False) each document in a request of its own. `sampler`
        runs from the first request until the last document is settled, not over the status reads after it:
        those are the bench's own load."""
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        async with self.client() as client:
            ingest = client.ingest_all if batched else client.ingest_each
            with sampler or contextlib.nullcontext():
                ids = await ingest(namespace, self._documents(passages))
                await client.wait_until_settled(namespace, ids[-1:])
            statuses = list((await client.wait_until_settled(namespace, ids)).values())
        first = min(datetime.fromisoformat(s["accepted_at"]) for s in statuses)
        last = max(datetime.fromisoformat(s["indexed_at"]) for s in statuses)
        chunks = sum(s["chunks"] for s in statuses)
        seconds = (last - first).total_seconds()
        return {
            "namespace": namespace,
            "documents": len(statuses),
            "chunks": chunks,
            "seconds": round(seconds, 2),
            "chunks_per_s": round(chunks / seconds, 1),
            "failed": sum(s["status"] != "indexed" for s in statuses),
        }

    async def freshness(self, passages: dict[str, str], rate: float, seconds: float) -> dict[str, Any]:
        namespace = f"fresh-{uuid.uuid4().hex[:8]}"
        ids = list(passages)[: int(rate * seconds)]
        async with self.client() as client:
            started = time.monotonic()
            tasks = []
            for number, document in enumerate(self._documents({i: passages[i] for i in ids})):
                await asyncio.sleep(max(0.0, started + number / rate - time.monotonic()))
                tasks.append(asyncio.create_task(client.ingest(namespace, document)))
            await asyncio.gather(*tasks)
            statuses = await self._settled(client, namespace, ids)
        lags = [
            (datetime.fromisoformat(s["indexed_at"]) - datetime.fromisoformat(s["accepted_at"])).total_seconds()
            for s in statuses
            if s["status"] == "indexed"
        ]
        return {
            "rate_docs_per_s": rate,
            "documents": len(lags),
            **percentiles(lags, "s", 3),
            "max_s": round(max(lags), 3),
        }

    async def search_latency(
        self, namespace: str, queries: Sequence[str], mode: str, concurrency: int, requests: int, cached: bool = False
    ) -> dict[str, Any]:
        """Every query unique (the cache-miss path), or with `cached` one query asked again and again after a
        first ask: the answer comes from the result cache, so what is timed is the path alone (HTTP, the
        gateway, the gRPC hop, one Redis lookup), the least any search through the stack costs."""
        latencies: list[float] = []
        hits = 0
        gate = asyncio.Semaphore(concurrency)
        async with self.client() as client:
            http = client.http  # its pool and API key, for the search API

            async def ask(query: str) -> httpx.Response:
                body = {"query": query, "namespace": namespace, "mode": mode, "top_k": 10, "generate": False}
                response = await http.post(f"{self.search_url}/api/search", json=body)
                return response.raise_for_status()

            async def one(number: int) -> None:
                nonlocal hits
                query = queries[0] if cached else _unique_query(queries, number)
                async with gate:
                    started = time.perf_counter()
                    response = await ask(query)
                    latencies.append((time.perf_counter() - started) * 1000)
                hits += bool(response.json()["metadata"]["cache_hit"])

            if cached:
                await ask(queries[0])
            started = time.perf_counter()
            await asyncio.gather(*(one(n) for n in range(requests)))
            seconds = time.perf_counter() - started
        return {"mode": mode, "cached": cached, "cache_hits": hits, **_latency_row(concurrency, latencies, seconds)}

    async def _found(self, http: httpx.AsyncClient, namespace: str, word: str) -> bool:
        """Does a keyword search of the namespace find a document holding the word? (404: no documents.)"""
        response = await http.post(
            f"{self.search_url}/api/search",
            json={"query": word, "namespace": namespace, "mode": "keyword", "top_k": 1, "generate": False},
        )
        if response.status_code == 404:
            return False
        response.raise_for_status()
        return bool(response.json()["sources"])

    async def _until(self, http: httpx.AsyncClient, namespace: str, word: str, found: bool) -> None:
        # An inbox worker that is not running fails the bench (RetryError), not hangs it.
        await AsyncRetrying(
            retry=retry_if_result(lambda seen: seen != found), stop=stop_after_delay(60), wait=wait_fixed(0.01)
        )(self._found, http, namespace, word)

    async def bucket_events(self, objects: Minio, bucket: str, passages: dict[str, str]) -> dict[str, Any]:
        """Each passage as an object of the watched bucket, one at a time on the idle stack: seconds from the
        start of its write until a search finds it, and from the start of its delete until none does."""
        namespace = f"bucket-{uuid.uuid4().hex[:8]}"
        written, deleted = [], []
        async with self.client() as client:
            for document_id, text in passages.items():
                word = f"bucket{uuid.uuid4().hex[:12]}"  # found in this document alone
                name = f"{namespace}/{document_id}.txt"
                data = f"{text} {word}".encode()
                started = time.perf_counter()
                await asyncio.to_thread(objects.put_object, bucket, name, io.BytesIO(data), len(data))
                await self._until(client.http, namespace, word, found=True)
                written.append(time.perf_counter() - started)
                started = time.perf_counter()
                await asyncio.to_thread(objects.remove_object, bucket, name)
                await self._until(client.http, namespace, word, found=False)
                deleted.append(time.perf_counter() - started)
        return {
            "objects": len(passages),
            **percentiles(written, "s", 3, prefix="write_to_searchable_"),
            **percentiles(deleted, "s", 3, prefix="delete_to_gone_"),
        }


def bare_embedding(engine: EmbeddingEngine, texts: list[str]) -> list[dict[str, Any]]:
    """The bare model on the same chunks: one row per batch size (an engine that runs each text alone, int8,
    has no batch size to choose: one row)."""
    rows = []
    chosen = engine.batch_size
    engine.embed(texts[:64])  # warm-up
    alone = engine.onnx is not None and engine.onnx.texts_alone
    for batch_size in (1,) if alone else BARE_BATCH_SIZES:
        engine.batch_size = batch_size
        started, cpu_started = time.perf_counter(), time.process_time()
        engine.embed(texts)
        rows.append(
            {
                "batch_size": batch_size,
                "chunks_per_s": round(len(texts) / (time.perf_counter() - started), 1),
                "cpu_ms_per_chunk": round((time.process_time() - cpu_started) * 1000 / len(texts), 2),
                "device": engine.device,
                "backend": engine.backend,
            }
        )
    engine.batch_size = chosen
    return rows


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run at the median rate (of an odd number: one that was measured), with every run's rate."""
    ranked = sorted(runs, key=lambda run: run["chunks_per_s"])
    return {**ranked[len(ranked) // 2], "rounds_chunks_per_s": [run["chunks_per_s"] for run in runs]}


def at_best_batch(rounds: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """Each batch size at its median over the rounds, and the best of those: the bare model as a user who
    chose its batch size would run it."""
    by_size: dict[int, list[dict[str, Any]]] = {}
    for rows in rounds:
        for row in rows:
            by_size.setdefault(row["batch_size"], []).append(row)
    return max((median_run(runs) for runs in by_size.values()), key=lambda run: run["chunks_per_s"])


def cpu_budget(
    indexing: dict[str, Any], chunks: int, cpu_s: dict[str, float], machine_s: dict[str, float]
) -> dict[str, Any]:
    """What the indexing targets leave per chunk, against what the runs spent on `chunks` chunks: at a rate of
    R chunks/s the machine's cores give cores / R seconds of CPU to each chunk, and the model's share is what
    the engine called bare spends (its own process time). `machine_s`: all cores' seconds over the runs, busy,
    idle and stolen, as shares of the whole (the stack's processes' share of it apart)."""
    cores = psutil.cpu_count() or 1
    spent = {name: round(seconds * 1000 / chunks, 2) for name, seconds in cpu_s.items() if seconds}

    def allowed(rate: float) -> float:
        return round(cores * 1000 / rate, 1)

    total = sum(machine_s.values()) or 1.0
    return {
        "cores": cores,
        "pipeline_ms_per_chunk": spent,
        "pipeline_ms_per_chunk_total": round(sum(spent.values()), 1),
        "model_ms_per_chunk": indexing["bare_engine"]["cpu_ms_per_chunk"],
        "allowed_ms_per_chunk_at_1_5x_bare_model": allowed(1.5 * indexing["bare_model"]["chunks_per_s"]),
        "allowed_ms_per_chunk_at_0_6_of_engine": allowed(0.6 * indexing["bare_engine"]["chunks_per_s"]),
        "machine_share": {
            "stack": round(sum(cpu_s.values()) / total, 3),
            **{name: round(seconds / total, 3) for name, seconds in machine_s.items()},
        },
    }


CONCURRENCIES = (1, 8, 32)


def bare_search(
    engine: EmbeddingEngine,
    data_dir: Path,
    namespace: str,
    queries: Sequence[str],
    mode: str,
    requests: int = 200,
    concurrencies: Sequence[int] = CONCURRENCIES,
) -> list[dict[str, Any]]:
    """Embed the query with `engine` and search the same index in this process, at each concurrency
    (threads, as the peer's client runs): what the stack adds (hops, serialization, spans) shows against it at
    the same concurrency, and its CPU per request is the work's own."""
    from ragtrace.vectorstore.faiss_store import FaissStore

    store = FaissStore(data_dir)
    alpha = SearchSettings().default_alpha

    def ask(query: str) -> int:
        if mode == "keyword":
            return len(store.keyword_search(namespace, query, 10))
        vector = engine.embed([query])[0].tolist()
        if mode == "vector":
            return len(store.search(namespace, vector, 10))
        return len(store.hybrid_search(namespace, query, vector, 10, alpha))

    rows = []
    try:
        ask(queries[0])  # warm-up: the namespace's indexes are built on first use
        for concurrency in concurrencies:
            with ProcessSampler({"bare": os.getpid()}) as process:
                row = _threaded_latency(ask, queries, concurrency, requests)
            row["cpu_ms_per_request"] = round(process.cpu_s["bare"] * 1000 / row["requests"], 2)
            rows.append({"mode": mode, "encoder": engine.backend, **row})
    finally:
        store.close()
    return rows


PEER_COLLECTION = "BenchPeer"


def weaviate_peer(
    settings: WeaviateSettings,
    engine: EmbeddingEngine,
    passages: dict[str, str],
    queries: Sequence[str],
    requests: int = 200,
    concurrencies: Sequence[int] = CONCURRENCIES,
    weaviate_pid: int | None = None,
) -> list[dict[str, Any]]:
    """The peer a user would build instead of ragtrace's query path: the passages' chunks and vectors (ragtrace's
    engine, as the pipeline makes them) written in ragtrace's own Weaviate layout by its Weaviate store, then per
    request the query encoded in this process by the same engine and one Weaviate hybrid query (weaviate-client,
    rankedFusion, the default alpha, top 10). Every query unique, as in the stack's cache-miss measurement.
    p50/p99, req/s and CPU per request (this process and, given its pid, Weaviate) per concurrency."""
    store = WeaviateStore(settings, PEER_COLLECTION)
    namespace = f"peer-{uuid.uuid4().hex[:8]}"
    chunked = {document_id: engine.chunk(text) for document_id, text in passages.items()}
    vectors = iter(engine.embed([c.text for chunks in chunked.values() for c in chunks]).tolist())
    documents = [
        DocumentChunks(
            document_id=document_id,
            metadata={"title": f"bench {document_id}"},
            chunks=[
                IndexedChunk(chunk_id(document_id, c.chunk_no), c.chunk_no, c.text, c.start, c.end, next(vectors))
                for c in chunks
            ],
            model=engine.model_name,
        )
        for document_id, chunks in chunked.items()
    ]
    store.write(namespace, documents, [])
    if weaviate_pid:
        _until_idle(psutil.Process(weaviate_pid))
    tenant = store.collection().with_tenant(namespace)

    alpha = SearchSettings().default_alpha

    def ask(query: str) -> int:
        vector = engine.embed([query])[0].tolist()
        found = tenant.query.hybrid(query, vector=vector, alpha=alpha, limit=10, fusion_type=HybridFusion.RANKED)
        return len(found.objects)

    pids = {"peer client": os.getpid(), **({"weaviate": weaviate_pid} if weaviate_pid else {})}
    rows = []
    try:
        ask(queries[0])  # warm-up: the connection and the tenant
        for concurrency in concurrencies:
            with ProcessSampler(pids) as processes:
                row = _threaded_latency(ask, queries, concurrency, requests)
            row["cpu_ms_per_request"] = {
                name: round(seconds * 1000 / requests, 2) for name, seconds in processes.cpu_s.items()
            }
            rows.append(row)
    finally:
        store.drop(namespace)
        store.close()
    return rows


def _until_idle(process: psutil.Process, timeout_s: float = 60.0) -> None:
    """Until the process uses under a tenth of a core over a second (Weaviate indexes and compacts a write in the
    background: measured meanwhile, the peer would pay for its own ingestion), or `timeout_s`."""
    Retrying(
        retry=retry_if_result(lambda busy: busy),
        stop=stop_after_delay(timeout_s),
        retry_error_callback=lambda _: None,
    )(lambda: process.cpu_percent(interval=1.0) >= 10.0)


def _threaded_latency(
    ask: Callable[[str], int], queries: Sequence[str], concurrency: int, requests: int
) -> dict[str, Any]:
    """`requests` calls of `ask`, `concurrency` at a time from threads (the encoder and the gRPC client release
    the GIL): latency percentiles and req/s, and how many of the calls found anything."""
    latencies: list[float] = []

    def one(number: int) -> int:
        query = _unique_query(queries, number)
        started = time.perf_counter()
        found = ask(query)
        latencies.append((time.perf_counter() - started) * 1000)
        return found

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answered = sum(1 for found in pool.map(one, range(requests)) if found)
    return {**_latency_row(concurrency, latencies, time.perf_counter() - started), "answered": answered}


def _unique_query(queries: Sequence[str], number: int) -> str:
    """The number-th query with a unique word added: the result cache and the query-embedding cache both miss."""
    return f"{queries[number % len(queries)]} {uuid.uuid4().hex[:6]}"


def _latency_row(concurrency: int, latencies: list[float], seconds: float) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / seconds, 1),
        **percentiles(latencies, "ms", 1),
    }


def run(
    data: Path,
    ingest_url: str,
    search_url: str,
    api_key: str,
    pids: dict[str, int],
    index_dir: Path,
    documents: int,
    output_dir: Path,
    inbox: tuple[Minio, str],
    peer: tuple[WeaviateSettings, int | None],
    bucket_objects: int = 30,
) -> dict[str, Any]:
    """`inbox`: the MinIO client and the watched bucket, for the bucket-event measurement; `peer`: a running
    Weaviate and its pid, for the peer's."""
    eval_set = EvalSet.load(data)
    ids = list(eval_set.corpus)
    bench = Bench(ingest_url, search_url, api_key)
    tag = uuid.uuid4().hex[:6]
    take = {f"{tag}-{i}": eval_set.corpus[i]["text"] for i in ids[:documents]}

    console.print(
        f"[bold]1. indexing[/] {len(take)} passages through POST /ingest/batch, then the bare model and "
        f"ragtrace's engine on the same chunks; {INDEXING_ROUNDS} rounds"
    )
    # The bare model: sentence-transformers with torch (fp32 on CPU), what a user would run instead; and
    # ragtrace's own engine (the default backend) called bare, which leaves the pipeline's overhead alone and
    # is the bare search's encoder too.
    model = EmbeddingEngine(EmbeddingSettings(backend="torch"))
    own_engine = EmbeddingEngine(EmbeddingSettings())
    chunk_texts = [c.text for text in take.values() for c in own_engine.chunk(text)]
    runs, samplers, bare_rounds, own_rounds = [], [], [], []
    asyncio.run(bench.indexing({f"{tag}-warm-{i}": eval_set.corpus[i]["text"] for i in ids[:WARM_UP_DOCUMENTS]}))
    for _ in range(INDEXING_ROUNDS):
        samplers.append(ProcessSampler(pids))
        runs.append(asyncio.run(bench.indexing(take, sampler=samplers[-1])))
        bare_rounds.append(bare_embedding(model, chunk_texts))
        own_rounds.append(bare_embedding(own_engine, chunk_texts))
    indexing = median_run(runs)
    bare, own = at_best_batch(bare_rounds), at_best_batch(own_rounds)
    singles = {f"{tag}-one-{i}": eval_set.corpus[i]["text"] for i in ids[documents : 2 * documents]}
    console.print(f"[bold]1b. indexing[/] {len(singles)} other passages, one POST /ingest each")
    per_document = asyncio.run(bench.indexing(singles, batched=False))
    for measured in (indexing, per_document):
        measured["bare_model"], measured["bare_engine"] = bare, own
        measured["ratio_pipeline_over_bare"] = round(measured["chunks_per_s"] / bare["chunks_per_s"], 3)
        measured["ratio_pipeline_over_engine"] = round(measured["chunks_per_s"] / own["chunks_per_s"], 3)
    indexing["per_document"] = per_document
    cpu_s = {name: round(sum(s.cpu_s.get(name, 0.0) for s in samplers), 1) for name in pids}
    machine_s = {part: round(sum(s.machine_s[part] for s in samplers), 1) for part in samplers[0].machine_s}
    indexing["cpu_budget"] = cpu_budget(indexing, sum(run["chunks"] for run in runs), cpu_s, machine_s)

    console.print("[bold]2. freshness[/] at steady rates")
    fresh_ids = ids[2 * documents :]
    freshness = [
        asyncio.run(bench.freshness({f"{tag}-{rate}-{i}": eval_set.corpus[i]["text"] for i in fresh_ids}, rate, 20))
        for rate in (5.0, 20.0)
    ]

    console.print("[bold]3. search latency[/] (no generation): the cache-miss path, then the cache hit")
    queries = list(eval_set.queries.values())
    search = []
    asked: list[tuple[str, int, bool]] = [
        *((mode, concurrency, False) for mode in ("vector", "keyword", "hybrid") for concurrency in CONCURRENCIES),
        *(("hybrid", concurrency, True) for concurrency in (1, 8)),
    ]
    for mode, concurrency, cached in asked:
        with ProcessSampler(pids) as processes_searching:
            row = asyncio.run(bench.search_latency(indexing["namespace"], queries, mode, concurrency, 200, cached))
        # Where a request's CPU goes, by process (the bench client's own is not counted).
        row["cpu_ms_per_request"] = {
            name: round(seconds * 1000 / row["requests"], 2)
            for name, seconds in processes_searching.cpu_s.items()
            if seconds
        }
        search.append(row)
    # The stack's query encoder (the embedding service's settings), for the bare search and the peer alike.
    query_engine = EmbeddingEngine(EmbeddingSettings(), serves_queries=True)
    bare_rows = [
        row
        for mode in ("vector", "keyword", "hybrid")
        for row in bare_search(query_engine, index_dir, indexing["namespace"], queries, mode)
    ]
    bare_p50 = {(row["mode"], row["concurrency"]): row["p50_ms"] for row in bare_rows}
    console.print(f"[bold]6. the peer[/]: the same {len(take)} passages in Weaviate, its own hybrid query")
    peer_rows = weaviate_peer(peer[0], query_engine, take, queries, weaviate_pid=peer[1])
    for row in search:
        bare = bare_p50[row["mode"], row["concurrency"]]
        row["ratio_p50_over_bare"] = round(row["p50_ms"] / max(bare, 0.01), 1)

    console.print(f"[bold]5. bucket events[/] {bucket_objects} objects written, then deleted, one at a time")
    bucket_passages = {f"{tag}-bucket-{i}": eval_set.corpus[i]["text"] for i in ids[:bucket_objects]}
    bucket_events = asyncio.run(bench.bucket_events(*inbox, bucket_passages))

    results = new_results(
        indexing=indexing,
        freshness=freshness,
        search=search,
        bare_search=bare_rows,
        weaviate_peer=peer_rows,
        bucket_events=bucket_events,
        peak_rss_mib_during_indexing={name: round(max(s.peak_mib[name] for s in samplers)) for name in pids},
        cpu_s_during_indexing=cpu_s,
    )
    _report(results, output_dir)
    return results


def _report(results: dict[str, Any], output_dir: Path) -> None:
    indexing = results["indexing"]
    single = indexing["per_document"]
    rows = [
        f"| indexing, pipeline through POST /ingest/batch | {indexing['chunks_per_s']} chunks/s "
        f"({indexing['chunks']} chunks, {indexing['seconds']} s; the median of {_rounds(indexing)}) | |",
        f"| indexing, pipeline one POST /ingest each | {single['chunks_per_s']} chunks/s ({single['chunks']} "
        f"chunks, {single['seconds']} s; {single['ratio_pipeline_over_bare']} of bare) | |",
        f"| indexing, bare model (batch {indexing['bare_model']['batch_size']}, "
        f"{indexing['bare_model']['device']}) | {indexing['bare_model']['chunks_per_s']} chunks/s (the median of "
        f"{_rounds(indexing['bare_model'])}) | |",
        f"| ratio pipeline / bare | **{indexing['ratio_pipeline_over_bare']}** | ≥ 1.5 |",
        f"| indexing, ragtrace's engine bare ({indexing['bare_engine']['backend']}, batch "
        f"{indexing['bare_engine']['batch_size']}) | {indexing['bare_engine']['chunks_per_s']} chunks/s (the "
        f"median of {_rounds(indexing['bare_engine'])}) | |",
        f"| ratio pipeline / engine bare | **{indexing['ratio_pipeline_over_engine']}** | ≥ 0.6 |",
        _budget_row(indexing["cpu_budget"]),
    ]
    for row in results["freshness"]:
        rows.append(
            f"| freshness at {row['rate_docs_per_s']:g} docs/s | p50 {row['p50_s']} s, p99 **{row['p99_s']} s**"
            f" | p99 < 1 s at 20 docs/s |"
        )
    targets = {1: "p99 < 20 ms (hybrid)", 8: "p99 < 50 ms (hybrid)"}
    for row in results["search"]:
        if row["cached"]:
            rows.append(
                f"| search {row['mode']}, cache hit ({row['cache_hits']} of {row['requests']}: the path alone, HTTP, "
                f"gateway, gRPC, one Redis lookup), concurrency {row['concurrency']} | p50 {row['p50_ms']} ms, p99 "
                f"{row['p99_ms']} ms, {row['requests_per_s']} req/s; {_cpu_summary(row['cpu_ms_per_request'])} | |"
            )
            continue
        rows.append(
            f"| search {row['mode']}, concurrency {row['concurrency']} | p50 {row['p50_ms']} ms, "
            f"p99 **{row['p99_ms']} ms** ({row['ratio_p50_over_bare']}x bare p50 at the same concurrency), "
            f"{row['requests_per_s']} req/s; "
            f"{_cpu_summary(row['cpu_ms_per_request'])} | {targets.get(row['concurrency'], '')} |"
        )
    for row in results["bare_search"]:
        rows.append(
            f"| bare search {row['mode']}, concurrency {row['concurrency']} (in-process, {row['encoder']} encoder) "
            f"| p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['requests_per_s']} req/s; "
            f"CPU ms/request {row['cpu_ms_per_request']} | |"
        )
    for row in results["weaviate_peer"]:
        rows.append(
            f"| peer: ONNX int8 encoder in the client + Weaviate hybrid, concurrency {row['concurrency']} "
            f"| p50 {row['p50_ms']} ms, p99 **{row['p99_ms']} ms**, {row['requests_per_s']} req/s; "
            f"{_cpu_summary(row['cpu_ms_per_request'])} |"
            + (" /api/search p99 below it |" if row["concurrency"] == 8 else " |")
        )
    events = results["bucket_events"]
    rows += [
        f"| bucket event, write → searchable ({events['objects']} objects, idle) | p50 "
        f"{events['write_to_searchable_p50_s']} s, p99 **{events['write_to_searchable_p99_s']} s** | p99 < 2 s |",
        f"| bucket event, delete → gone from results | p50 {events['delete_to_gone_p50_s']} s, p99 "
        f"**{events['delete_to_gone_p99_s']} s** | p99 < 2 s |",
    ]
    cpu = results["cpu_s_during_indexing"]
    for name, mib in results["peak_rss_mib_during_indexing"].items():
        rows.append(f"| during indexing: {name} | peak RSS {mib} MiB, CPU {cpu.get(name, 0)} s | |")
    write_results(results, "ragtrace bench", ("measure", "value", "target"), rows, output_dir, latest=True)


def _budget_row(budget: dict[str, Any]) -> str:
    return (
        f"| indexing CPU per chunk, batch path ({budget['cores']} cores) | pipeline "
        f"{budget['pipeline_ms_per_chunk_total']} ms: {_largest(budget['pipeline_ms_per_chunk'], 6)}; the model "
        f"alone (engine bare) {budget['model_ms_per_chunk']} ms; the machine meanwhile: {_shares(budget)} | 1.5x "
        "bare model allows "
        f"{budget['allowed_ms_per_chunk_at_1_5x_bare_model']} ms, 0.6 of the engine "
        f"{budget['allowed_ms_per_chunk_at_0_6_of_engine']} ms |"
    )


def _rounds(measured: dict[str, Any]) -> str:
    return " / ".join(f"{rate:g}" for rate in measured["rounds_chunks_per_s"])


def _shares(budget: dict[str, Any]) -> str:
    share = budget["machine_share"]
    return (
        f"busy {share['busy']:.0%} (the stack's processes {share['stack']:.0%}), idle {share['idle']:.0%}, "
        f"stolen {share['steal']:.0%}"
    )


def _cpu_summary(cpu_ms: dict[str, float]) -> str:
    """CPU per request in all, and the four processes that took the most of it."""
    return f"CPU ms/request {sum(cpu_ms.values()):.1f}: {_largest(cpu_ms, 4)}"


def _largest(ms_by_process: dict[str, float], count: int) -> str:
    """The `count` processes that took the most, largest first: "name ms, ..."."""
    most = sorted(ms_by_process.items(), key=lambda kv: -kv[1])[:count]
    return ", ".join(f"{name} {ms}" for name, ms in most)
