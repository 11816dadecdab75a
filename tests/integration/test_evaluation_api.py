"""`ragtrace eval` through the running system (`make eval`): the set is ingested through the batch endpoint
and asked through POST /api/search. A set's ids need not be ones the API accepts as document ids (DBpedia's
are `<dbpedia:Name>`): they are sent under ids it accepts and scored under their own."""

from __future__ import annotations

import uuid
from pathlib import Path

from ragtrace_tools.evaluation import run
from tests import test_evaluation as in_process
from tests.pipeline import API_KEY, Pipeline


def _dbpedia(document_id: str) -> str:
    return f"<dbpedia:{document_id}>"


def test_a_set_whose_ids_the_api_refuses_is_measured_under_its_own_ids(
    faiss_pipeline: Pipeline, tmp_path: Path
) -> None:
    # The in-process test's set, its ids in DBpedia's shape.
    corpus = [{**row, "_id": _dbpedia(row["_id"])} for row in in_process.CORPUS]
    qrels = {query: _dbpedia(document) for query, document in in_process.QRELS.items()}
    in_process.write_set(tmp_path / "sets" / "entities", corpus, in_process.QUERIES, qrels)
    api = (faiss_pipeline.base_url, faiss_pipeline.search_url, API_KEY)

    results = run(tmp_path / "sets", [0.5], tmp_path / "eval.json", api, "evaltest-" + uuid.uuid4().hex[:8])

    scores = results["entities"]
    # Each query's document is first in every system: nDCG@10 is exactly 1, under the set's own ids.
    assert scores["ragtrace keyword"] == 1.0 and scores["ragtrace default (no options)"] == 1.0
    assert scores["baseline BM25 (rank-bm25)"] == 1.0
