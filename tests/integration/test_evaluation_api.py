"""`ragtrace eval` through the running system (`make eval`): the set is ingested through the batch endpoint
and asked through POST /api/search. A set's ids need not be ones the API accepts as document ids (DBpedia's
are `<dbpedia:Name>`): they are sent under ids it accepts and scored under their own."""

from __future__ import annotations

import uuid
from pathlib import Path

from ragtrace_tools.evaluation import run
from tests.pipeline import API_KEY, Pipeline
from tests.test_evaluation import write_set

CORPUS = [
    {"_id": "<dbpedia:Thermometer>", "title": "Thermometer", "text": "Fahrenheit invented the mercury thermometer."},
    {"_id": "<dbpedia:Volcano>", "title": "Volcano", "text": "A volcano erupts when magma rises through the crust."},
    {"_id": "bread", "title": "Bread", "text": "Sourdough bread rises because wild yeast ferments the dough."},
]
QUERIES = {"q1": "who invented the mercury thermometer", "q2": "magma rising through the crust"}
QRELS = {"q1": "<dbpedia:Thermometer>", "q2": "<dbpedia:Volcano>"}


def test_a_set_whose_ids_the_api_refuses_is_measured_under_its_own_ids(
    faiss_pipeline: Pipeline, tmp_path: Path
) -> None:
    write_set(tmp_path / "sets" / "entities", CORPUS, QUERIES, QRELS)
    api = (faiss_pipeline.base_url, faiss_pipeline.search_url, API_KEY)

    results = run(tmp_path / "sets", [0.5], tmp_path / "eval.json", api, "evaltest-" + uuid.uuid4().hex[:8])

    scores = results["entities"]
    # Each query's document is first in every system: nDCG@10 is exactly 1, under the set's own ids.
    assert scores["ragtrace keyword"] == 1.0 and scores["ragtrace default (no options)"] == 1.0
    assert scores["baseline BM25 (rank-bm25)"] == 1.0
