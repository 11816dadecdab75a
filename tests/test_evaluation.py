"""`ragtrace eval --in-process` on two tiny BEIR-format sets: every set under the folder is measured in one
run, every system reads title + text, and an empty document is left out."""

from __future__ import annotations

import json
from pathlib import Path

from ragtrace_tools.evaluation import run

CORPUS = [
    {"_id": "thermo", "title": "", "text": "Fahrenheit invented the mercury thermometer in 1714."},
    {"_id": "volcano", "title": "", "text": "A volcano erupts when magma rises through the crust."},
    {"_id": "bread", "title": "", "text": "Sourdough bread rises because wild yeast ferments the dough."},
    # The query's word is only in the title: found only by a system that reads it.
    {"_id": "mineral", "title": "Zyxquorbium", "text": "A fictional mineral that glows under ultraviolet light."},
    {"_id": "empty", "title": "", "text": ""},
]
QUERIES = {"q1": "who invented the mercury thermometer", "q2": "zyxquorbium"}
QRELS = {"q1": "thermo", "q2": "mineral"}


def write_set(
    folder: Path,
    corpus: list[dict[str, str]] = CORPUS,
    queries: dict[str, str] = QUERIES,
    qrels: dict[str, str] = QRELS,
) -> None:
    """A BEIR-format set: corpus.jsonl, queries.jsonl and qrels/test.tsv (one relevant document per query)."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("".join(f"{q}\t{d}\t1\n" for q, d in qrels.items()))


def test_every_set_and_every_system_in_one_run(tmp_path: Path) -> None:
    for name in ("tiny-b", "tiny-a"):
        write_set(tmp_path / "sets" / name)
    (tmp_path / "sets" / "not-a-set").mkdir()
    output = tmp_path / "eval.json"

    results = run(tmp_path / "sets", [0.5], output, None, "eval")

    assert list(results) == ["tiny-a", "tiny-b"]
    systems = [
        "ragtrace vector",
        "ragtrace keyword",
        "ragtrace hybrid alpha=0.5",
        "ragtrace default (no options)",
        "baseline BM25 (rank-bm25)",
        "baseline dense exact (all-MiniLM-L6-v2)",
        "baseline RRF k=60 (BM25 + dense)",
    ]
    written = json.loads(output.read_text())
    if written["embedding_backend"]["backend"] != "torch":  # the default, next to torch fp32 in the same run
        systems.append("baseline dense exact (all-MiniLM-L6-v2, torch fp32)")
        assert written["embedding_backend"]["against_torch_fp32"]["holds"]
    for scores in results.values():
        assert list(scores) == systems
        # The relevant document is first for both queries in every system: nDCG@10 is exactly 1.
        assert scores["ragtrace keyword"] == 1.0 and scores["baseline BM25 (rank-bm25)"] == 1.0
        assert scores["ragtrace default (no options)"] == 1.0
    assert written["ragtrace"] == "in-process" and written["ndcg_at_10"] == results
    # The default against the best baseline, query by query: both find every document first.
    for comparison in written["default_against_best_baseline"].values():
        assert comparison["queries"] == 2 and comparison["difference"] == 0.0 and comparison["p"] == 1.0
    assert list(written["default_against_best_baseline"]) == ["tiny-a", "tiny-b"]
