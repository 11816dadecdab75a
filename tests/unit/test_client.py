"""The ingest client against a fake ingest API (httpx's MockTransport): the body it sends, the waiting rule
(accept order, one check per interval, a round stops at the first document on its way), timeouts, errors."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import pytest

from ragtrace_tools.client import AsyncIngestClient, Document, IngestClient, IngestError, NotSettled

KEY = "test-key"


class FakeIngestApi:
    """Accepts documents; each becomes `final` after `checks` status reads (a document id may override)."""

    def __init__(self, checks: int = 2, final: str = "indexed", stuck: frozenset[str] = frozenset()) -> None:
        self.checks, self.final, self.stuck = checks, final, stuck
        self.bodies: list[dict[str, object]] = []
        self.reads: Counter[str] = Counter()
        self.order: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["X-API-Key"] == KEY
        if request.method == "POST":
            body = json.loads(request.content)
            if not body["text"].strip():
                return httpx.Response(422, json={"error": "validation", "message": "text is blank"})
            self.bodies.append(body)
            return httpx.Response(202, json={"document_id": body["document_id"], "status": "accepted"})
        document_id = request.url.path.rsplit("/", 1)[1]
        assert request.url.params["namespace"] == "ns"
        self.reads[document_id] += 1
        self.order.append(document_id)
        done = self.reads[document_id] > self.checks and document_id not in self.stuck
        state = self.final if done else "accepted"
        return httpx.Response(200, json={"document_id": document_id, "status": state, "error": None})


def _documents(count: int) -> list[Document]:
    return [Document(f"text {i}", f"title {i}", f"d{i}", {"topic": "t"}) for i in range(count)]


def test_ingest_and_wait_checks_documents_in_accept_order() -> None:
    api = FakeIngestApi(checks=2)
    with IngestClient("http://ingest/", KEY, transport=httpx.MockTransport(api), interval_s=0.001) as client:
        statuses = client.ingest_and_wait("ns", _documents(3))
    assert list(statuses) == ["d0", "d1", "d2"] and all(s["status"] == "indexed" for s in statuses.values())
    assert api.bodies[0] == {
        "text": "text 0",
        "namespace": "ns",
        "document_id": "d0",
        "metadata": {"title": "title 0", "topic": "t"},
    }
    # d0 is checked until it settles, then each next one: never a later document before an earlier one settles.
    assert api.order == ["d0"] * 3 + ["d1"] * 3 + ["d2"] * 3


def test_waiting_for_other_states_and_the_timeout() -> None:
    api = FakeIngestApi(checks=0, final="duplicate", stuck=frozenset({"d1"}))
    with IngestClient("http://ingest", KEY, transport=httpx.MockTransport(api), interval_s=0.001) as client:
        client.ingest_all("ns", _documents(3))
        assert client.wait_until_settled("ns", ["d0"], states={"duplicate"})["d0"]["status"] == "duplicate"
        with pytest.raises(NotSettled) as late:
            client.wait_until_settled("ns", ["d0", "d1", "d2"], timeout_s=0.05)
    assert list(late.value.settled) == ["d0"] and late.value.pending == ["d1", "d2"]
    assert "2 of 3 documents" in str(late.value) and "'d1', is accepted" in str(late.value)


def test_a_refused_document_raises_with_the_apis_answer() -> None:
    with (
        IngestClient("http://ingest", KEY, transport=httpx.MockTransport(FakeIngestApi())) as client,
        pytest.raises(IngestError, match=r"HTTP 422.*text is blank") as refused,
    ):
        client.ingest("ns", Document(" ", "blank"))
    assert refused.value.status_code == 422


def test_async_client_ingests_concurrently_and_reports_progress() -> None:
    api = FakeIngestApi(checks=1, final="failed")
    progress: list[tuple[int, int]] = []

    async def scenario() -> dict[str, dict[str, object]]:
        async with AsyncIngestClient(
            "http://ingest", KEY, transport=httpx.MockTransport(api), interval_s=0.001
        ) as client:
            ids = await client.ingest_all("ns", _documents(20), concurrency=4)
            assert ids == [f"d{i}" for i in range(20)]
            return await client.wait_until_settled("ns", ids, on_settled=lambda *p: progress.append(p))

    statuses = asyncio.run(scenario())
    assert len(statuses) == 20 and {s["status"] for s in statuses.values()} == {"failed"}
    assert progress == [(i, 20) for i in range(1, 21)]
