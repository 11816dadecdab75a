"""`ragtrace eval` (`make eval`): retrieval quality of the running system on a BEIR-format set, through its
real HTTP API, next to a BM25 baseline (rank-bm25) and an exact dense baseline (the bare model) computed in
the same run on the same machine.

nDCG@10 uses linear gains (BEIR's pytrec_eval convention); a chunk's hit counts for its document, once.
"""

from __future__ import annotations

import asyncio
import json
import math
import platform
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

console = Console()


@dataclass(frozen=True)
class EvalSet:
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @classmethod
    def load(cls, folder: Path) -> EvalSet:
        corpus = {}
        for row in _json_lines(folder / "corpus.jsonl"):
            corpus[str(row["_id"])] = {"title": row.get("title") or "", "text": row["text"]}
        queries = {str(r["_id"]): r["text"] for r in _json_lines(folder / "queries.jsonl")}
        qrels: dict[str, dict[str, int]] = {}
        for line in (folder / "qrels" / "test.tsv").read_text().splitlines():
            query_id, passage_id, grade = line.split("\t")[:3]
            if grade.isdigit():  # skips a header line, if the file has one
                qrels.setdefault(query_id, {})[passage_id] = int(grade)
        return cls(corpus, {q: t for q, t in queries.items() if q in qrels}, qrels)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    # Split on "\n" only: str.splitlines() would also split on U+2028 and friends inside the JSON strings.
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def ndcg_at_10(ranked: Sequence[str], relevant: dict[str, int]) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:10]))
    ideal = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    return dcg / ideal if ideal else 0.0


def mean_ndcg(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> float:
    return sum(ndcg_at_10(rankings.get(q, []), qrels[q]) for q in qrels) / len(qrels)


class Client:
    def __init__(self, ingest_url: str, search_url: str, api_key: str) -> None:
        self.http = httpx.AsyncClient(headers={"X-API-Key": api_key}, timeout=60)
        self.ingest_url, self.search_url = ingest_url.rstrip("/"), search_url.rstrip("/")

    async def ingest_all(self, eval_set: EvalSet, namespace: str, concurrency: int = 16) -> None:
        gate = asyncio.Semaphore(concurrency)
        with Progress(console=console) as progress:
            task = progress.add_task("ingest", total=len(eval_set.corpus))

            async def ingest(passage_id: str, passage: dict[str, str]) -> None:
                async with gate:
                    body = {
                        "text": passage["text"],
                        "namespace": namespace,
                        "document_id": passage_id,
                        "metadata": {"title": passage["title"] or f"msmarco {passage_id}"},
                    }
                    response = await self.http.post(f"{self.ingest_url}/ingest", json=body)
                    response.raise_for_status()
                    progress.advance(task)

            await asyncio.gather(*(ingest(i, p) for i, p in eval_set.corpus.items()))

    async def wait_indexed(self, ids: Sequence[str], namespace: str) -> None:
        """Until every document is settled. Documents are checked in the order they were accepted and a round
        stops at the first one still on its way, so waiting costs the system almost nothing."""
        pending = list(ids)
        with Progress(console=console) as progress:
            task = progress.add_task("index", total=len(ids))
            while pending:
                response = await self.http.get(
                    f"{self.ingest_url}/ingest/{pending[0]}", params={"namespace": namespace}
                )
                if response.json().get("status") in ("indexed", "duplicate", "failed"):
                    pending.pop(0)
                    progress.update(task, completed=len(ids) - len(pending))
                else:
                    await asyncio.sleep(0.5)

    async def rankings(self, queries: dict[str, str], namespace: str, **options: Any) -> dict[str, list[str]]:
        async def ranking(text: str) -> list[str]:
            response = await self.http.post(
                f"{self.search_url}/api/search",
                json={"query": text, "namespace": namespace, "top_k": 10, "generate": False, **options},
            )
            response.raise_for_status()
            return list(dict.fromkeys(s["document_id"] for s in response.json()["sources"]))

        ranked = await asyncio.gather(*(ranking(t) for t in queries.values()))
        return dict(zip(queries, ranked, strict=True))


def bm25_baseline(eval_set: EvalSet) -> dict[str, list[str]]:
    from rank_bm25 import BM25Okapi

    ids = list(eval_set.corpus)

    def tokens(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    bm25 = BM25Okapi([tokens(eval_set.corpus[i]["text"]) for i in ids])
    return {q: [ids[j] for j in np.argsort(-bm25.get_scores(tokens(t)))[:10]] for q, t in eval_set.queries.items()}


def dense_baseline(eval_set: EvalSet, embed: Callable[[list[str]], np.ndarray]) -> dict[str, list[str]]:
    ids = list(eval_set.corpus)
    passages = embed([eval_set.corpus[i]["text"] for i in ids])
    questions = embed(list(eval_set.queries.values()))
    scores = questions @ passages.T
    return {q: [ids[j] for j in np.argsort(-scores[row])[:10]] for row, q in enumerate(eval_set.queries)}


async def _measure(eval_set: EvalSet, client: Client, namespace: str, alphas: Sequence[float]) -> dict[str, float]:
    """Ingest the corpus through the API, wait until it is indexed, then rank every query in each mode."""
    await client.ingest_all(eval_set, namespace)
    await client.wait_indexed(list(eval_set.corpus), namespace)
    results: dict[str, float] = {}
    for mode, options in [("vector", {}), ("keyword", {})] + [(f"hybrid alpha={a}", {"alpha": a}) for a in alphas]:
        rankings = await client.rankings(eval_set.queries, namespace, mode=mode.split(" ")[0], **options)
        results[f"ragtrace {mode}"] = mean_ndcg(rankings, eval_set.qrels)
    return results


def run(
    folder: Path, ingest_url: str, search_url: str, api_key: str, namespace: str, alphas: Sequence[float], output: Path
) -> dict[str, float]:
    from embedding.engine import EmbeddingEngine
    from embedding.settings import EmbeddingSettings

    eval_set = EvalSet.load(folder)
    console.print(f"{len(eval_set.corpus)} passages, {len(eval_set.queries)} judged queries from {folder}")
    results = asyncio.run(_measure(eval_set, Client(ingest_url, search_url, api_key), namespace, alphas))
    console.print("baselines: BM25 (rank-bm25) and exact dense search with the bare model")
    results["baseline BM25 (rank-bm25)"] = mean_ndcg(bm25_baseline(eval_set), eval_set.qrels)
    engine = EmbeddingEngine(EmbeddingSettings())
    dense = dense_baseline(eval_set, engine.embed)
    results[f"baseline dense exact ({engine.model_name})"] = mean_ndcg(dense, eval_set.qrels)
    table = Table("system", "nDCG@10", title=f"{folder.name}: {len(eval_set.queries)} queries")
    for name, score in results.items():
        table.add_row(name, f"{score:.4f}")
    console.print(table)
    output.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "date": datetime.now(UTC).isoformat(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "set": folder.name,
        "ndcg_at_10": results,
    }
    output.write_text(json.dumps(summary, indent=2))
    console.print(f"written to {output}")
    return results
