"""`make bench`'s peer (issue 28): the passages' chunks and vectors in a real Weaviate, in ragtrace's own layout,
asked with Weaviate's own hybrid query, the query encoded in the client process."""

from __future__ import annotations

from embedding.engine import EmbeddingEngine
from embedding.settings import EmbeddingSettings
from ragtrace.vectorstore.weaviate_store import WeaviateStore
from ragtrace_tools.bench.stack import PEER_COLLECTION, weaviate_peer
from tests.infra import Infra

PASSAGES = {
    f"p{number}": f"Passage {number} is about {topic}."
    for number, topic in enumerate(
        ["Kafka partitions", "MinIO buckets", "Redis caches", "Weaviate tenants", "FAISS indexes", "gRPC deadlines"]
    )
}


def test_the_peer_answers_every_request_at_each_concurrency_and_leaves_nothing_behind(infra: Infra) -> None:
    engine = EmbeddingEngine(EmbeddingSettings(), serves_queries=True)
    queries = ["Kafka partitions", "how are buckets named", "tenants"]

    rows = weaviate_peer(infra.weaviate, engine, PASSAGES, queries, requests=80, concurrencies=(1, 3))

    assert [row["concurrency"] for row in rows] == [1, 3]
    for row in rows:
        # Every hybrid query found passages: an empty tenant (a failed write) answers with none.
        assert row["answered"] == row["requests"] == 80, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
        assert row["requests_per_s"] > 0, row
        # The encoder runs in this process: 80 encodings are well above the sampler's 0.1 s resolution.
        assert row["cpu_ms_per_request"]["peer client"] > 0, row
    store = WeaviateStore(infra.weaviate, PEER_COLLECTION)
    try:
        assert not [t for t in store.collection().tenants.get() if t.startswith("peer-")], "the peer's tenant dropped"
    finally:
        store.close()
