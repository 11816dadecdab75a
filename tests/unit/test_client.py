"""The ingest client against a fake ingest API (httpx's MockTransport): the bodies it sends, batches under the
API's limits, the waiting rule (accept order, a window of documents per status request, an interval between
requests unless the window settled), timeouts, errors."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import httpx
import pytest

from ragtrace.ingest_client import (
    BATCH_DOCUMENTS,
    UNAVAILABLE_GRACE_S,
    AsyncIngestClient,
    Document,
    DocumentsRefused,
    IngestClient,
    IngestError,
    NotSettled,
    Settling,
    batches,
)
from ragtrace.schemas import MAX_BATCH_DOCUMENTS, DocumentInput, document_id_for_path

KEY = "test-key"


class FakeIngestApi:
    """Accepts documents; each becomes `final` after `checks` status reads (a document id may override)."""

    def __init__(self, checks: int = 2, final: str = "indexed", stuck: frozenset[str] = frozenset()) -> None:
        self.checks, self.final, self.stuck = checks, final, stuck
        self.bodies: list[dict[str, Any]] = []
        self.batches: list[int] = []
        self.reads: Counter[str] = Counter()
        self.windows: list[list[str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["X-API-Key"] == KEY
        body = json.loads(request.content) if request.content else {}
        if request.url.path == "/ingest/batch":
            self.batches.append(len(body["documents"]))
            results = [
                self._accept(i, {**item, "namespace": body["namespace"]}) for i, item in enumerate(body["documents"])
            ]
            return httpx.Response(202, json={"results": results})
        if request.url.path == "/ingest/status":
            assert body["namespace"] == "ns"
            self.windows.append(body["document_ids"])
            return httpx.Response(200, json={"documents": {d: self._status(d) for d in body["document_ids"]}})
        if request.url.path == "/ingest":
            if not body["text"].strip():
                return httpx.Response(422, json={"error": "validation", "message": "text is blank"})
            self.bodies.append(body)
            return httpx.Response(202, json={"document_id": body["document_id"], "status": "accepted"})
        raise AssertionError(f"unexpected {request.method} {request.url}")

    def _accept(self, index: int, body: dict[str, Any]) -> dict[str, Any]:
        if not body["text"].strip():
            return {"index": index, "error": {"field": f"documents[{index}].text", "message": "text is blank"}}
        self.bodies.append(body)
        return {"index": index, "document_id": body["document_id"], "status": "accepted"}

    def _status(self, document_id: str) -> dict[str, Any]:
        self.reads[document_id] += 1
        done = self.reads[document_id] > self.checks and document_id not in self.stuck
        return {"document_id": document_id, "status": self.final if done else "accepted", "error": None}


def _documents(count: int) -> list[Document]:
    return [Document(f"text {i}", f"title {i}", f"d{i}", {"topic": "t"}) for i in range(count)]


def test_ingest_and_wait_sends_batches_and_checks_documents_in_accept_order() -> None:
    api = FakeIngestApi(checks=2)
    with IngestClient("http://ingest/", KEY, transport=httpx.MockTransport(api), interval_s=0.001) as client:
        statuses = client.ingest_and_wait("ns", _documents(3))
    assert list(statuses) == ["d0", "d1", "d2"] and all(s["status"] == "indexed" for s in statuses.values())
    assert api.batches == [3]
    assert api.bodies[0] == {
        "text": "text 0",
        "namespace": "ns",
        "document_id": "d0",
        "metadata": {"title": "title 0", "topic": "t"},
    }
    # One status request per round, for the earliest pending documents: as many as settled in the round
    # before, plus one (each document here settles on its third read).
    assert api.windows == [["d0", "d1", "d2"], ["d0"], ["d0"], ["d1", "d2"], ["d1"], ["d2"]]


def test_waiting_reads_a_window_of_the_earliest_pending_documents() -> None:
    settling = Settling([f"d{i}" for i in range(5)], {"indexed"}, None, 0.5, window=2)
    assert settling.next_ids() == ["d0", "d1"]
    assert settling.observe({"d0": {"status": "indexed"}, "d1": {"status": "accepted"}}) == 0.5
    assert settling.next_ids() == ["d1", "d2"]
    assert settling.observe({"d1": {"status": "indexed"}, "d2": {"status": "indexed"}}) == 0.0
    assert settling.observe({"d3": None, "d4": {"status": "indexed"}}) == 0.5  # d3 not even there yet
    assert settling.pending() == ["d3"] and list(settling.settled) == ["d0", "d1", "d2", "d4"]


def test_each_check_reads_about_as_many_documents_as_settle_between_checks() -> None:
    settling = Settling([f"d{i}" for i in range(30)], {"indexed"}, None, 0.5, window=8)

    def check(settled: set[str]) -> tuple[list[str], float]:
        window = settling.next_ids()
        states = {d: {"status": "indexed" if d in settled else "embedding"} for d in window}
        return window, settling.observe(states)

    assert check({"d1", "d2", "d3"}) == ([f"d{i}" for i in range(8)], 0.5)
    # Three settled: the next check reads four, the slow d0 first, so it never hides those behind it.
    assert check({"d4", "d5", "d6"}) == (["d0", "d4", "d5", "d6"], 0.5)
    assert check({"d0", "d7", "d8", "d9"}) == (["d0", "d7", "d8", "d9"], 0.5)
    # All of them settled: twice as many next, and a whole window settled is checked again at once.
    assert check({f"d{i}" for i in range(10, 18)}) == ([f"d{i}" for i in range(10, 18)], 0.0)
    assert check(set()) == ([f"d{i}" for i in range(18, 26)], 0.5)
    assert settling.next_ids() == ["d18"], "nothing settled: the next check reads only the earliest"


def test_batches_stay_under_the_apis_limits() -> None:
    many = [Document("x", "t", f"d{i}") for i in range(BATCH_DOCUMENTS * 2 + 1)]
    assert [len(b) for b in batches(many)] == [BATCH_DOCUMENTS, BATCH_DOCUMENTS, 1]
    assert BATCH_DOCUMENTS <= MAX_BATCH_DOCUMENTS
    large = [Document("y" * (3 * 1024 * 1024), "t", f"big{i}") for i in range(3)]
    assert [len(b) for b in batches(large)] == [2, 1]  # 8 MiB of JSON at most per request


def test_a_refused_document_in_a_batch_raises_naming_it() -> None:
    api = FakeIngestApi()
    documents = [*_documents(2), Document(" ", "blank", "blank")]
    with IngestClient("http://ingest", KEY, transport=httpx.MockTransport(api)) as client:
        with pytest.raises(DocumentsRefused, match=r"documents\[2\]\.text: text is blank") as refused:
            client.ingest_all("ns", documents)
        assert client.ingest_batch("ns", documents)["results"][2]["error"]["field"] == "documents[2].text"
    assert [e["index"] for e in refused.value.errors] == [2]


def test_waiting_for_other_states_and_the_timeout() -> None:
    api = FakeIngestApi(checks=0, final="duplicate", stuck=frozenset({"d1"}))
    with IngestClient("http://ingest", KEY, transport=httpx.MockTransport(api), interval_s=0.001) as client:
        client.ingest_all("ns", _documents(3))
        assert client.wait_until_settled("ns", ["d0"], states={"duplicate"})["d0"]["status"] == "duplicate"
        with pytest.raises(NotSettled) as late:
            client.wait_until_settled("ns", ["d0", "d1", "d2"], timeout_s=0.05)
    assert list(late.value.settled) == ["d0", "d2"] and late.value.pending == ["d1"]
    assert "1 of 3 documents" in str(late.value) and "'d1', is accepted" in str(late.value)


def test_a_refused_document_raises_with_the_apis_answer() -> None:
    with (
        IngestClient("http://ingest", KEY, transport=httpx.MockTransport(FakeIngestApi())) as client,
        pytest.raises(IngestError, match=r"HTTP 422.*text is blank") as refused,
    ):
        client.ingest("ns", Document(" ", "blank"))
    assert refused.value.status_code == 422


def test_async_client_ingests_concurrently_and_reports_progress() -> None:
    api = FakeIngestApi(checks=1, final="failed")
    progress: list[str] = []

    async def scenario() -> dict[str, dict[str, object]]:
        async with AsyncIngestClient(
            "http://ingest", KEY, transport=httpx.MockTransport(api), interval_s=0.001
        ) as client:
            ids = await client.ingest_all("ns", _documents(20), concurrency=4)
            assert ids == [f"d{i}" for i in range(20)] and api.batches == [20]
            return await client.wait_until_settled("ns", ids, on_settled=lambda s: progress.append(s["document_id"]))

    statuses = asyncio.run(scenario())
    assert len(statuses) == 20 and {s["status"] for s in statuses.values()} == {"failed"}
    assert progress == [f"d{i}" for i in range(20)]


def test_a_path_names_one_document_whatever_its_characters() -> None:
    assert document_id_for_path("notes/2024/tides.md") == "notes:2024:tides.md"
    assert document_id_for_path("tides.md") == "tides.md"
    spaced, colon, slash = (document_id_for_path(p) for p in ("my notes/a b.md", "a:b", "a/b"))
    assert spaced.startswith("my_notes:a_b.md-") and len(spaced) == len("my_notes:a_b.md-") + 12
    assert colon != slash and slash == "a:b", "a ':' in a path is not confused with a folder"
    long = document_id_for_path("d/" * 100 + "x.txt")
    assert len(long) == 128 and long != document_id_for_path("d/" * 101 + "x.txt")
    for path in ("my notes/a b.md", "a:b", "..", "é.txt", "d/" * 100 + "x.txt"):
        assert DocumentInput.model_validate(
            {"text": "t", "metadata": {"title": "t"}, "document_id": document_id_for_path(path)}
        )


def _refused(status_code: int) -> IngestError:
    request = httpx.Request("POST", "http://127.0.0.1:8082/ingest/status")
    return IngestError(httpx.Response(status_code, request=request, text='{"dependency": "minio"}'))


def test_waiting_rides_out_a_dependency_briefly_away_and_no_other_refusal() -> None:
    clock = [1000.0]
    settling = Settling(["d0"], {"indexed"}, None, 0.5, clock=lambda: clock[0])
    assert settling.unavailable(_refused(503)) == 0.5, "a 503 is checked again"
    clock[0] += UNAVAILABLE_GRACE_S - 1
    assert settling.unavailable(_refused(503)) == 0.5
    assert settling.observe({"d0": {"status": "embedding"}}) == 0.5, "an answer ends the run of 503s"
    clock[0] += UNAVAILABLE_GRACE_S - 1
    assert settling.unavailable(_refused(503)) == 0.5
    clock[0] += UNAVAILABLE_GRACE_S
    with pytest.raises(IngestError, match="503"):
        settling.unavailable(_refused(503))
    with pytest.raises(IngestError, match="422"):
        Settling(["d0"], {"indexed"}, None, 0.5).unavailable(_refused(422))
    past_deadline = Settling(["d0"], {"indexed"}, 10.0, 0.5, clock=lambda: clock[0])
    clock[0] += 11
    with pytest.raises(IngestError, match="503"):
        past_deadline.unavailable(_refused(503))
