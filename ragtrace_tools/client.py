"""The one client for "ingest, then wait until indexed", used by eval, bench, drill, load-gen (and its
locustfile) and the tests' pipeline.

`POST /ingest` answers 202 once a document is accepted; its status record (`GET /ingest/{id}`) then says where
it is. Waiting follows one rule, written once in `Settling` for the sync and the async client: documents are
checked in the order they were accepted, and a round stops at the first one still on its way, so waiting
costs the system under test about one GET per interval whatever the number of documents. A wait ends when
every document is in one of the wanted states (by default an outcome: indexed, duplicate or failed), or
raises `NotSettled` after its timeout, carrying what had settled by then.

    with IngestClient("http://127.0.0.1:8000", api_key) as client:
        statuses = client.ingest_and_wait("docs", [Document("Tides rise twice a day.", "Tides", "tides")])
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx

from ragtrace.schemas import DocumentState

Status = dict[str, Any]
"""A document's status record as GET /ingest/{id} returns it (the JSON of ragtrace.schemas.DocumentStatus)."""

OUTCOMES: frozenset[str] = frozenset({DocumentState.INDEXED, DocumentState.DUPLICATE, DocumentState.FAILED})
"""Where an accepted document ends up: waiting for these waits until the pipeline is done with it."""

POLL_INTERVAL_S = 0.2
INGEST_CONCURRENCY = 16

Progress = Callable[[int, int], None]
"""Called as (settled, total) each time one more document settles."""


@dataclass(frozen=True)
class Document:
    """One document to ingest: the body of POST /ingest, less the namespace."""

    text: str
    title: str  # the API requires one
    document_id: str | None = None  # None: the API derives one from the content
    metadata: Mapping[str, Any] = field(default_factory=dict)  # free keys next to the title

    def body(self, namespace: str) -> dict[str, Any]:
        return {
            "text": self.text,
            "namespace": namespace,
            "document_id": self.document_id,
            "metadata": {"title": self.title, **self.metadata},
        }


class IngestError(RuntimeError):
    """The ingest API refused a request: the status code, and the body in the message."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        super().__init__(
            f"{response.request.method} {response.request.url}: HTTP {response.status_code}: {response.text[:500]}"
        )


class NotSettled(TimeoutError):
    """Documents not in the wanted states in time; `settled` holds the statuses of those that were."""

    def __init__(self, settling: Settling, last: Status) -> None:
        self.settled, self.pending = dict(settling.settled), settling.pending()
        state = f"{last.get('status')}" + (f" ({last['error']})" if last.get("error") else "")
        super().__init__(
            f"{len(self.pending)} of {len(settling.ids)} documents not {sorted(settling.states)} after "
            f"{settling.timeout_s or 0:.0f} s; the first, {self.pending[0]!r}, is {state}"
        )


class Settling:
    """The waiting rule, without I/O: which document to check next, and how long to wait before checking
    again. Both clients drive it; see the module's description."""

    def __init__(
        self,
        document_ids: Iterable[str],
        states: Collection[str],
        timeout_s: float | None,
        interval_s: float,
        on_settled: Progress | None = None,
    ) -> None:
        self.ids = list(dict.fromkeys(document_ids))
        self.states, self.timeout_s, self.interval_s = frozenset(states), timeout_s, interval_s
        self.on_settled = on_settled
        self.settled: dict[str, Status] = {}
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def next_id(self) -> str | None:
        """The document to check now; None once every document is settled."""
        return self.ids[len(self.settled)] if len(self.settled) < len(self.ids) else None

    def pending(self) -> list[str]:
        return self.ids[len(self.settled) :]

    def observe(self, status: Status) -> float:
        """The status of `next_id()`: seconds to wait before the next check (0: check the next one at once).
        Raises NotSettled once the timeout has passed."""
        if status.get("status") in self.states:
            self.settled[self.ids[len(self.settled)]] = status
            if self.on_settled:
                self.on_settled(len(self.settled), len(self.ids))
            return 0.0
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise NotSettled(self, status)
        return self.interval_s


HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)


class _Endpoints(Generic[HttpT]):
    """What both clients share: the URLs, the X-API-Key header, reading an answer, and the HTTP client. Given
    `http`, a client uses it and leaves it open; otherwise it owns one, made with the key as a default header
    and `http_options` (httpx's: timeout, limits, ...), which callers may use for other requests too."""

    _http_class: type[HttpT]

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        http: HttpT | None = None,
        interval_s: float = POLL_INTERVAL_S,
        **http_options: Any,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"X-API-Key": api_key} if api_key is not None else {}
        self.interval_s = interval_s
        self._owned = http is None
        self.http: HttpT = http or self._http_class(headers=self.headers, **{"timeout": 60.0, **http_options})

    def ingest_url(self) -> str:
        return f"{self.base_url}/ingest"

    def status_url(self, document_id: str) -> str:
        return f"{self.base_url}/ingest/{document_id}"

    def reindex_url(self, namespace: str) -> str:
        return f"{self.base_url}/namespaces/{namespace}/reindex"

    @staticmethod
    def json(response: httpx.Response) -> dict[str, Any]:
        if response.is_error:
            raise IngestError(response)
        body: dict[str, Any] = response.json()
        return body


class IngestClient(_Endpoints[httpx.Client]):
    """Blocking client (tests, load-gen's report, the locustfile's seeding under gevent)."""

    _http_class = httpx.Client

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def ingest(self, namespace: str, document: Document) -> dict[str, Any]:
        """POST /ingest; the 202 body (document_id, status, trace_id, ...)."""
        return self.json(self.http.post(self.ingest_url(), json=document.body(namespace), headers=self.headers))

    def status(self, namespace: str, document_id: str) -> Status:
        return self.json(
            self.http.get(self.status_url(document_id), params={"namespace": namespace}, headers=self.headers)
        )

    def reindex(self, namespace: str) -> Status:
        """POST /namespaces/{namespace}/reindex: start re-indexing the namespace; its progress."""
        return self.json(self.http.post(self.reindex_url(namespace), headers=self.headers))

    def reindex_progress(self, namespace: str) -> Status:
        """GET /namespaces/{namespace}/reindex: how far its last re-index is."""
        return self.json(self.http.get(self.reindex_url(namespace), headers=self.headers))

    def ingest_all(self, namespace: str, documents: Iterable[Document]) -> list[str]:
        """Each document in turn; their ids in accept order."""
        return [str(self.ingest(namespace, document)["document_id"]) for document in documents]

    def wait_until_settled(
        self,
        namespace: str,
        document_ids: Iterable[str],
        *,
        states: Collection[str] = OUTCOMES,
        timeout_s: float | None = None,
        on_settled: Progress | None = None,
    ) -> dict[str, Status]:
        """Until every document is in one of `states`: their statuses, in accept order."""
        settling = Settling(document_ids, states, timeout_s, self.interval_s, on_settled)
        while (document_id := settling.next_id()) is not None:
            if delay := settling.observe(self.status(namespace, document_id)):
                time.sleep(delay)
        return settling.settled

    def ingest_and_wait(
        self,
        namespace: str,
        documents: Iterable[Document],
        *,
        states: Collection[str] = OUTCOMES,
        timeout_s: float | None = None,
    ) -> dict[str, Status]:
        ids = self.ingest_all(namespace, documents)
        return self.wait_until_settled(namespace, ids, states=states, timeout_s=timeout_s)


class AsyncIngestClient(_Endpoints[httpx.AsyncClient]):
    """The same client for asyncio (eval, bench, drill), which ingests many documents concurrently."""

    _http_class = httpx.AsyncClient

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()

    async def ingest(self, namespace: str, document: Document) -> dict[str, Any]:
        """POST /ingest; the 202 body (document_id, status, trace_id, ...)."""
        return self.json(await self.http.post(self.ingest_url(), json=document.body(namespace), headers=self.headers))

    async def status(self, namespace: str, document_id: str) -> Status:
        response = await self.http.get(
            self.status_url(document_id), params={"namespace": namespace}, headers=self.headers
        )
        return self.json(response)

    async def ingest_all(
        self,
        namespace: str,
        documents: Iterable[Document],
        concurrency: int = INGEST_CONCURRENCY,
        on_accepted: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[str]:
        """The documents, `concurrency` requests at a time; their ids in the order given."""
        gate = asyncio.Semaphore(concurrency)

        async def one(document: Document) -> str:
            async with gate:
                accepted = await self.ingest(namespace, document)
            if on_accepted:
                on_accepted(accepted)
            return str(accepted["document_id"])

        return list(await asyncio.gather(*(one(d) for d in documents)))

    async def wait_until_settled(
        self,
        namespace: str,
        document_ids: Iterable[str],
        *,
        states: Collection[str] = OUTCOMES,
        timeout_s: float | None = None,
        on_settled: Progress | None = None,
    ) -> dict[str, Status]:
        """Until every document is in one of `states`: their statuses, in accept order."""
        settling = Settling(document_ids, states, timeout_s, self.interval_s, on_settled)
        while (document_id := settling.next_id()) is not None:
            if delay := settling.observe(await self.status(namespace, document_id)):
                await asyncio.sleep(delay)
        return settling.settled

    async def ingest_and_wait(
        self,
        namespace: str,
        documents: Iterable[Document],
        *,
        states: Collection[str] = OUTCOMES,
        timeout_s: float | None = None,
    ) -> dict[str, Status]:
        ids = await self.ingest_all(namespace, documents)
        return await self.wait_until_settled(namespace, ids, states=states, timeout_s=timeout_s)
