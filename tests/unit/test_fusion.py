"""Hybrid ranking: weighted reciprocal rank fusion, the feedback chunks, the expanded query vector, and the
FAISS store's hybrid search putting them together on a real store in a temporary folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ragtrace.vectorstore import DocumentChunks, IndexedChunk, expanded_query, feedback_ids, fused_ranking, rank_fusion
from ragtrace.vectorstore.faiss_store import FaissStore
from ragtrace_tools.evaluation import documents_of, ndcg_at_10


def test_rank_fusion_weights_each_rank_as_weaviate_ranked_fusion_does() -> None:
    fused = rank_fusion([["a", "b"], ["b", "c"]], [0.7, 0.3])
    assert list(fused) == ["b", "a", "c"]
    assert fused["a"] == pytest.approx(0.7 / 60)
    assert fused["b"] == pytest.approx(0.7 / 61 + 0.3 / 60)
    assert fused["c"] == pytest.approx(0.3 / 61)


def test_a_ranking_of_weight_zero_adds_nothing() -> None:
    [(only, score)] = fused_ranking(["a", "b"], ["b"], 0.0, 10)
    assert only == "b" and score == pytest.approx(1 / 60)
    assert [item for item, _ in fused_ranking(["a", "b"], ["c", "b"], 1.0, 10)] == ["a", "b"]


def test_the_fused_ranking_keeps_top_k_with_their_fused_score() -> None:
    fused = fused_ranking([1, 2, 3], [3, 4], 0.5, 2)
    assert [item for item, _ in fused] == [3, 1]
    assert [score for _, score in fused] == pytest.approx([0.5 / 62 + 0.5 / 60, 0.5 / 60])


def test_feedback_is_what_both_retrievers_rank_high() -> None:
    # b is second for the vectors but first for the keywords: above a, first for the vectors only.
    assert feedback_ids(["a", "b", "c"], ["b", "d"], 2) == ["b", "a"]
    assert feedback_ids(["a"], [], 3) == ["a"]
    assert feedback_ids(["a"], ["b"], 0) == []


def test_the_expanded_query_adds_the_feedback_centroid_and_stays_unit_length() -> None:
    expanded = expanded_query([1.0, 0.0], np.array([[0.0, 1.0], [0.6, 0.8]], dtype=np.float32))
    # [1, 0] + mean([0, 1], [0.6, 0.8]) = [1.3, 0.9], normalized.
    norm = math.hypot(1.3, 0.9)
    assert expanded == pytest.approx([1.3 / norm, 0.9 / norm])
    assert expanded_query([1.0, 0.0], np.zeros((0, 2), dtype=np.float32)) == [1.0, 0.0]


def _store(tmp_path: Path, feedback_chunks: int) -> FaissStore:
    # Cosines to the query [1, 0, 0]: apple 0.9, zebra 0.8, mango 0.7.
    chunks = {
        "apple": [0.9, 0.0, math.sqrt(1 - 0.81)],
        "zebra": [0.8, 0.6, 0.0],
        "mango": [0.7, math.sqrt(1 - 0.49), 0.0],
    }
    store = FaissStore(tmp_path, feedback_chunks)
    store.write(
        "ns",
        [
            DocumentChunks(name, {"title": name}, [IndexedChunk(f"{name}:0", 0, f"a note on {name}", 0, 9, vector)])
            for name, vector in chunks.items()
        ],
        [],
    )
    return store


def test_hybrid_search_ranks_with_the_query_expanded_by_feedback(tmp_path: Path) -> None:
    query = [1.0, 0.0, 0.0]
    # alpha 1: the order is the vector ranking alone, with the query as given...
    without = _store(tmp_path / "plain", feedback_chunks=0).hybrid_search("ns", "zebra", query, 3, 1.0)
    assert [h.document_id for h in without] == ["apple", "zebra", "mango"]
    # ...and expanded: zebra, which both retrievers rank high, is the feedback; the query moves towards it,
    # which brings mango (close to zebra) above apple. Cosines with [1.8, 0.6, 0] / |.|: 0.949, 0.890, 0.854.
    expanded = _store(tmp_path / "feedback", feedback_chunks=1).hybrid_search("ns", "zebra", query, 3, 1.0)
    assert [h.document_id for h in expanded] == ["zebra", "mango", "apple"]
    assert [h.score for h in expanded] == pytest.approx([1 / 60, 1 / 61, 1 / 62])


def test_a_document_counts_once_at_its_best_chunk() -> None:
    assert documents_of(["a", "b", "a", "c"]) == ["a", "b", "c"]
    relevant = {"a": 2, "c": 1}
    ideal = 2 + 1 / math.log2(3)
    assert ndcg_at_10(documents_of(["a", "b", "a", "c"]), relevant) == pytest.approx((2 + 1 / math.log2(4)) / ideal)
