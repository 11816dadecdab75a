"""`ragtrace eval` (`make eval`): retrieval quality on every BEIR-format set under one folder, in one run.

For each set, ragtrace is measured in each search mode, and with the service's defaults, either through the
running system's real HTTP API (`make up`) or, with `--in-process`, by indexing the same chunks and vectors
into a FAISS store in this process and calling the store's own ranking code (fast iteration, no stack).
Next to it, in the same run, three baselines a user could build in an afternoon: BM25 (rank-bm25), exact
dense search with the bare model, and reciprocal rank fusion (k=60) of those two. Every system reads the
same text: a document's title and text when it has a title.

nDCG@10 uses linear gains (BEIR's pytrec_eval convention); a chunk's hit counts for its document, once.

On each set the default is compared with the best baseline query by query: the mean difference, its bootstrap
95% interval and a sign-flip randomization test's p-value, so that a set of 40 judged queries is not read as
more than it can tell.

The embedding engine runs with its defaults (on CPU, the ONNX backend: embedding/settings.py). When that is not
torch fp32, the dense baseline is also measured with torch fp32 in the same run, and each set's difference
is checked against QUALITY_BOUND: the default backend is accepted only within it on every set.
"""

from __future__ import annotations

import asyncio
import json
import math
import platform
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ragtrace.ingest_client import AsyncIngestClient, Document
from ragtrace.schemas import chunk_id, document_id_for_path
from ragtrace.vectorstore import DocumentChunks, IndexedChunk, rank_fusion

console = Console()

# Documents each system ranks for nDCG@10, and how many chunks are asked for to find them.
RANKED_DOCUMENTS = 10
RANKED_CHUNKS = 30
# Depth of each baseline list fused by RRF.
BASELINE_RRF_DEPTH = 100
# The most dense nDCG@10 the default embedding backend may lose (or gain) against torch fp32, on any set.
QUALITY_BOUND = 0.005
# Resamples of the paired comparison's bootstrap interval and randomization test.
RESAMPLES = 10_000
DEFAULT_SYSTEM = "ragtrace default (no options)"


@dataclass(frozen=True)
class EvalSet:
    name: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @classmethod
    def load(cls, folder: Path) -> EvalSet:
        corpus = {}
        for row in _json_lines(folder / "corpus.jsonl"):
            title, text = (row.get("title") or "").strip(), row["text"]
            if title or text.strip():  # an empty document cannot be ingested: no system sees it
                corpus[str(row["_id"])] = {"title": title, "text": text}
        queries = {str(r["_id"]): r["text"] for r in _json_lines(folder / "queries.jsonl")}
        qrels: dict[str, dict[str, int]] = {}
        for line in (folder / "qrels" / "test.tsv").read_text().splitlines():
            query_id, passage_id, grade = line.split("\t")[:3]
            if grade.isdigit():  # skips a header line, if the file has one
                qrels.setdefault(query_id, {})[passage_id] = int(grade)
        return cls(folder.name, corpus, {q: t for q, t in queries.items() if q in qrels}, qrels)

    def text(self, document_id: str) -> str:
        """What every system reads of a document: its title, when it has one, then its text."""
        document = self.corpus[document_id]
        return f"{document['title']}\n{document['text']}" if document["title"] else document["text"]


def eval_folders(root: Path) -> list[Path]:
    """Every BEIR-format set directly under root (or root itself when it is one), by name."""
    if (root / "corpus.jsonl").is_file():
        return [root]
    return sorted(folder for folder in root.iterdir() if (folder / "corpus.jsonl").is_file())


def _json_lines(path: Path) -> list[dict[str, Any]]:
    # Split on "\n" only: str.splitlines() would also split on U+2028 and friends inside the JSON strings.
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def ndcg_at_10(ranked: Sequence[str], relevant: dict[str, int]) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:10]))
    ideal = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    return dcg / ideal if ideal else 0.0


def per_query_ndcg(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    return {q: ndcg_at_10(rankings.get(q, []), qrels[q]) for q in qrels}


def mean_ndcg(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> float:
    return _mean(per_query_ndcg(rankings, qrels))


def _mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


@dataclass(frozen=True)
class PairedDifference:
    """A system's nDCG@10 minus a baseline's over the same queries: the mean, its bootstrap 95% interval, and
    the two-sided p-value of a sign-flip randomization test (how often swapping the two systems' scores at
    random, query by query, gives a mean difference at least as large)."""

    baseline: str
    queries: int
    difference: float
    low: float
    high: float
    p: float


def paired_difference(system: dict[str, float], baseline: dict[str, float], name: str) -> PairedDifference:
    differences = np.array([system[q] - baseline[q] for q in system])
    observed = float(differences.mean())
    rng = np.random.default_rng(0)  # the same scores give the same interval and p-value in every run
    signs = rng.choice((-1.0, 1.0), size=(RESAMPLES, len(differences)))
    flipped = (signs * differences).mean(axis=1)
    p = float(np.mean(np.abs(flipped) >= abs(observed) - 1e-12))
    resampled = differences[rng.integers(0, len(differences), size=(RESAMPLES, len(differences)))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return PairedDifference(name, len(differences), round(observed, 4), round(float(low), 4), round(float(high), 4), p)


def documents_of(chunk_document_ids: Sequence[str]) -> list[str]:
    """A chunk ranking as a document ranking: each document at the rank of its best chunk."""
    return list(dict.fromkeys(chunk_document_ids))[:RANKED_DOCUMENTS]


class Searcher(Protocol):
    async def rankings(self, queries: dict[str, str], **options: Any) -> dict[str, list[str]]:
        """Each query's ranked document ids; options as in POST /api/search (mode, alpha), none: the defaults."""
        ...


class Client:
    """The running system, through POST /ingest and POST /api/search."""

    def __init__(self, ingest_url: str, search_url: str, api_key: str, namespace: str) -> None:
        self.documents = AsyncIngestClient(ingest_url, api_key)
        self.http = self.documents.http  # its pool and API key, for the search API
        self.search_url = search_url.rstrip("/")
        self.namespace = namespace
        # Document id in the API → the set's own id. A set's ids need not be ones the API accepts (DBpedia's are
        # `<dbpedia:Name>`): each is sent as the id a file of that name would get, which is unique and readable.
        self.set_ids: dict[str, str] = {}

    async def index(self, eval_set: EvalSet) -> None:
        """Every document of the set ingested, then waited for until settled, with a progress bar for each."""
        self.set_ids = {document_id_for_path(i): i for i in eval_set.corpus}
        documents = [
            # A title is required; an untitled document is named by its id.
            Document(eval_set.text(i), eval_set.corpus[i]["title"] or i, api_id)
            for api_id, i in self.set_ids.items()
        ]
        with Progress(console=console) as progress:
            ingest = progress.add_task(f"ingest {eval_set.name}", total=len(documents))
            ids = await self.documents.ingest_all(
                self.namespace, documents, on_accepted=lambda count: progress.advance(ingest, count)
            )
            index = progress.add_task("index", total=len(ids))
            await self.documents.wait_until_settled(self.namespace, ids, on_settled=lambda _: progress.advance(index))

    async def rankings(self, queries: dict[str, str], **options: Any) -> dict[str, list[str]]:
        gate = asyncio.Semaphore(8)

        async def ranking(text: str) -> list[str]:
            body = {"query": text, "namespace": self.namespace, "top_k": RANKED_CHUNKS, "generate": False, **options}
            async with gate:
                response = await self.http.post(f"{self.search_url}/api/search", json=body)
            response.raise_for_status()
            return documents_of([self.set_ids[s["document_id"]] for s in response.json()["sources"]])

        ranked = await asyncio.gather(*(ranking(t) for t in queries.values()))
        return dict(zip(queries, ranked, strict=True))


class InProcess:
    """The chunks and vectors the pipeline would index (the same engine chunks and embeds them), written to a
    FAISS store in a folder of this process, searched with the store's own code and the service's defaults."""

    def __init__(self, eval_set: EvalSet, engine: Any, data_dir: Path) -> None:
        from query.settings import SearchSettings
        from ragtrace.vectorstore import VectorStoreSettings
        from ragtrace.vectorstore.faiss_store import FaissStore

        self.engine = engine
        self.settings = SearchSettings()
        self.store = FaissStore(data_dir, VectorStoreSettings().feedback_chunks)
        self.namespace = "eval"
        self._index(eval_set)
        self.vectors: dict[str, list[float]] = {}

    def _index(self, eval_set: EvalSet) -> None:
        ids = list(eval_set.corpus)
        chunks = {i: self.engine.chunk(eval_set.text(i)) for i in ids}
        console.print(f"embedding {sum(map(len, chunks.values()))} chunks of {eval_set.name} in this process")
        vectors = iter(self.engine.embed([c.text for i in ids for c in chunks[i]]).tolist())
        documents = [
            DocumentChunks(
                i,
                {"title": eval_set.corpus[i]["title"] or i},
                [
                    IndexedChunk(chunk_id(i, c.chunk_no), c.chunk_no, c.text, c.start, c.end, next(vectors))
                    for c in chunks[i]
                ],
            )
            for i in ids
        ]
        self.store.write(self.namespace, documents, [])

    async def rankings(self, queries: dict[str, str], **options: Any) -> dict[str, list[str]]:
        missing = [t for t in queries.values() if t not in self.vectors]
        self.vectors.update(zip(missing, self.engine.embed(missing).tolist(), strict=True))
        mode = options.get("mode", self.settings.default_mode)
        alpha = options.get("alpha", self.settings.default_alpha)

        def ranking(text: str) -> list[str]:
            if mode == "keyword":
                hits = self.store.keyword_search(self.namespace, text, RANKED_CHUNKS)
            elif mode == "vector":
                hits = self.store.search(self.namespace, self.vectors[text], RANKED_CHUNKS)
            else:
                hits = self.store.hybrid_search(self.namespace, text, self.vectors[text], RANKED_CHUNKS, alpha)
            return documents_of([h.document_id for h in hits])

        return {q: ranking(t) for q, t in queries.items()}


def bm25_baseline(eval_set: EvalSet, depth: int = RANKED_DOCUMENTS) -> dict[str, list[str]]:
    from rank_bm25 import BM25Okapi

    ids = list(eval_set.corpus)

    def tokens(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    bm25 = BM25Okapi([tokens(eval_set.text(i)) for i in ids])
    return {q: [ids[j] for j in np.argsort(-bm25.get_scores(tokens(t)))[:depth]] for q, t in eval_set.queries.items()}


def dense_baseline(
    eval_set: EvalSet, embed: Callable[[list[str]], np.ndarray], depth: int = RANKED_DOCUMENTS
) -> dict[str, list[str]]:
    ids = list(eval_set.corpus)
    documents = embed([eval_set.text(i) for i in ids])
    questions = embed(list(eval_set.queries.values()))
    scores = questions @ documents.T
    return {q: [ids[j] for j in np.argsort(-scores[row])[:depth]] for row, q in enumerate(eval_set.queries)}


def baselines(eval_set: EvalSet, embed: Callable[[list[str]], np.ndarray], model: str) -> dict[str, dict[str, float]]:
    """Each baseline's nDCG@10 per query."""
    console.print(f"{eval_set.name}: baselines BM25 (rank-bm25), exact dense ({model}) and their RRF")
    bm25 = bm25_baseline(eval_set, BASELINE_RRF_DEPTH)
    dense = dense_baseline(eval_set, embed, BASELINE_RRF_DEPTH)
    fused = {q: list(rank_fusion([bm25[q], dense[q]], [1.0, 1.0]))[:RANKED_DOCUMENTS] for q in eval_set.queries}
    return {
        "baseline BM25 (rank-bm25)": per_query_ndcg(bm25, eval_set.qrels),
        f"baseline dense exact ({model})": per_query_ndcg(dense, eval_set.qrels),
        "baseline RRF k=60 (BM25 + dense)": per_query_ndcg(fused, eval_set.qrels),
    }


def against_best_baseline(systems: dict[str, dict[str, float]], baseline_names: Sequence[str]) -> PairedDifference:
    """The default against the baseline with the highest mean nDCG@10, query by query."""
    best = max(baseline_names, key=lambda name: _mean(systems[name]))
    return paired_difference(systems[DEFAULT_SYSTEM], systems[best], best)


async def measure(searcher: Searcher, eval_set: EvalSet, alphas: Sequence[float]) -> dict[str, dict[str, float]]:
    """nDCG@10 per query of ragtrace in each mode, each extra alpha, and with the service's defaults."""
    runs: list[tuple[str, dict[str, Any]]] = [("vector", {"mode": "vector"}), ("keyword", {"mode": "keyword"})]
    runs += [(f"hybrid alpha={a}", {"mode": "hybrid", "alpha": a}) for a in alphas]
    return {
        f"ragtrace {name}": per_query_ndcg(await searcher.rankings(eval_set.queries, **options), eval_set.qrels)
        for name, options in runs
    } | {DEFAULT_SYSTEM: per_query_ndcg(await searcher.rankings(eval_set.queries), eval_set.qrels)}


def run(
    root: Path,
    alphas: Sequence[float],
    output: Path,
    api: tuple[str, str, str] | None,
    namespace_prefix: str,
) -> dict[str, dict[str, float]]:
    """Every set under root: ragtrace through the API (api = ingest URL, search URL, key) or, api None, in
    this process; then the baselines. One table, one JSON file."""
    from embedding.engine import EmbeddingEngine
    from embedding.settings import EmbeddingSettings

    engine = EmbeddingEngine(EmbeddingSettings())
    # torch fp32 on the same device, for the quality bound, when the default is anything else.
    reference = (
        None
        if (engine.backend, engine.dtype) == ("torch", "float32")
        else EmbeddingEngine(EmbeddingSettings(backend="torch", device=engine.device, fp16=False))
    )
    results: dict[str, dict[str, float]] = {}
    comparisons: dict[str, PairedDifference] = {}
    for folder in eval_folders(root):
        eval_set = EvalSet.load(folder)
        console.print(f"{eval_set.name}: {len(eval_set.corpus)} documents, {len(eval_set.queries)} judged queries")
        if api is None:
            with tempfile.TemporaryDirectory() as data_dir:
                searcher: Searcher = InProcess(eval_set, engine, Path(data_dir))
                systems = asyncio.run(measure(searcher, eval_set, alphas))
        else:
            systems = asyncio.run(_through_api(eval_set, api, f"{namespace_prefix}-{eval_set.name}", alphas))
        baseline_systems = baselines(eval_set, engine.embed, engine.model_name)
        systems |= baseline_systems
        comparisons[eval_set.name] = against_best_baseline(systems, list(baseline_systems))
        scores = {name: _mean(per_query) for name, per_query in systems.items()}
        if reference is not None:
            dense = dense_baseline(eval_set, reference.embed)
            scores[f"baseline dense exact ({engine.model_name}, torch fp32)"] = mean_ndcg(dense, eval_set.qrels)
        results[eval_set.name] = scores
    _print(results, "in this process (FAISS store)" if api is None else "through the running system's API")
    _print_comparisons(comparisons)
    bound = None if reference is None else backend_bound(results, engine.model_name, f"{engine.backend} {engine.dtype}")
    output.parent.mkdir(parents=True, exist_ok=True)
    backend: dict[str, Any] = {"backend": engine.backend, "dtype": engine.dtype, "device": engine.device}
    if bound is not None:
        backend["against_torch_fp32"] = bound
    summary = {
        "date": datetime.now(UTC).isoformat(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "ragtrace": "in-process" if api is None else "api",
        "ndcg_at_10": results,
        "default_against_best_baseline": {name: asdict(c) for name, c in comparisons.items()},
        "embedding_backend": backend,
    }
    output.write_text(json.dumps(summary, indent=2))
    console.print(f"written to {output}")
    return results


async def _through_api(
    eval_set: EvalSet, api: tuple[str, str, str], namespace: str, alphas: Sequence[float]
) -> dict[str, dict[str, float]]:
    client = Client(*api, namespace=namespace)
    try:
        await client.index(eval_set)
        return await measure(client, eval_set, alphas)
    finally:
        await client.documents.aclose()


def backend_bound(results: dict[str, dict[str, float]], model: str, backend: str) -> dict[str, Any]:
    """Dense nDCG@10 of the default backend minus torch fp32's, per set, and whether all are within the bound."""
    default, fp32 = f"baseline dense exact ({model})", f"baseline dense exact ({model}, torch fp32)"
    differences = {name: round(scores[default] - scores[fp32], 4) for name, scores in results.items()}
    holds = all(abs(d) <= QUALITY_BOUND for d in differences.values())
    console.print(
        f"embedding backend {backend} against torch fp32, dense nDCG@10: "
        + ", ".join(f"{name} {d:+.4f}" for name, d in differences.items())
        + f" (bound {QUALITY_BOUND}): {'holds' if holds else 'NOT HELD'}"
    )
    return {"ndcg_difference": differences, "bound": QUALITY_BOUND, "holds": holds}


def _print(results: dict[str, dict[str, float]], how: str) -> None:
    sets = list(results)
    table = Table("system", *sets, title=f"nDCG@10, ragtrace {how}")
    for system in dict.fromkeys(s for scores in results.values() for s in scores):
        table.add_row(system, *(f"{results[s][system]:.4f}" if system in results[s] else "-" for s in sets))
    console.print(table)


def _print_comparisons(comparisons: dict[str, PairedDifference]) -> None:
    table = Table(
        "set", "best baseline", "queries", "difference", "95% interval", "p", title="default minus best baseline"
    )
    for name, c in comparisons.items():
        interval = f"[{c.low:+.4f}, {c.high:+.4f}]"
        table.add_row(name, c.baseline, str(c.queries), f"{c.difference:+.4f}", interval, f"{c.p:.3f}")
    console.print(table)
