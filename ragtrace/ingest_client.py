"""The one client of the ingest API: "ingest, then wait until indexed" for the CLI's `ragtrace ingest`, eval,
bench, drill, load-gen (and its locustfile) and the tests' pipeline; a document's status for the search gateway.

Documents go in through `POST /ingest/batch` (at most MAX_BATCH_DOCUMENTS a request, and under the body
limit), or one at a time through `POST /ingest`. Each answer says, per document, accepted (202) or why not;
its status record then says where it is, and `POST /ingest/status` reads many at once. Waiting follows one
rule, written once in `Settling` for the sync and the async client: documents are checked in the order they
were accepted, a window of them per request, one request per interval. The window is as many as settled in the
previous check, plus one, so that each status is read about once rather than once per check while it is in
flight (a status read is a MinIO read on the system under test); it doubles, up to STATUS_WINDOW, when all of it
had settled, and a whole STATUS_WINDOW settled is checked again at once (catching up). A wait ends when every
document is in one of the wanted states (by default an outcome: indexed, duplicate or failed), or raises
`NotSettled` after its timeout, carrying what had settled by then.

    with IngestClient("http://127.0.0.1:8082", api_key) as client:
        statuses = client.ingest_and_wait("docs", [Document("Tides rise twice a day.", "Tides", "tides")])
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx

from ragtrace.errors import DependencyUnavailable
from ragtrace.schemas import DocumentState

Status = dict[str, Any]
"""A document's status record as GET /ingest/{id} returns it (the JSON of ragtrace.schemas.DocumentStatus)."""

OUTCOMES: frozenset[str] = frozenset({DocumentState.INDEXED, DocumentState.DUPLICATE, DocumentState.FAILED})
"""Where an accepted document ends up: waiting for these waits until the pipeline is done with it."""

POLL_INTERVAL_S = 0.2
INGEST_CONCURRENCY = 16  # single-document requests in flight
BATCH_CONCURRENCY = 2  # batch requests in flight: each already keeps the ingest API's writers busy
# Documents per batch request: small enough that the pipeline starts on one batch while the API stores the next
# (the API writes a whole batch's records before announcing any), large enough to spread each request's cost.
BATCH_DOCUMENTS = 100
BATCH_BODY_BYTES = 8 * 1024 * 1024  # a batch's JSON, kept under the ingest API's 10 MiB body limit
STATUS_WINDOW = 32  # the most documents whose statuses one wait request reads
# How long status checks may be answered 503 in a row before waiting gives up with that answer.
UNAVAILABLE_GRACE_S = 30.0

Progress = Callable[[Status], None]
"""Called with a document's status each time one more document settles."""


@dataclass(frozen=True)
class Document:
    """One document to ingest: the body of POST /ingest, less the namespace."""

    text: str
    title: str  # the API requires one
    document_id: str | None = None  # None: the API derives one from the content
    metadata: Mapping[str, Any] = field(default_factory=dict)  # free keys next to the title

    def item(self) -> dict[str, Any]:
        """The document as an item of POST /ingest/batch."""
        return {"text": self.text, "document_id": self.document_id, "metadata": {"title": self.title, **self.metadata}}

    def body(self, namespace: str) -> dict[str, Any]:
        """The document as the body of POST /ingest."""
        return {**self.item(), "namespace": namespace}


def batches(documents: Iterable[Document]) -> Iterator[list[Document]]:
    """The documents in batches of BATCH_DOCUMENTS (the API takes up to MAX_BATCH_DOCUMENTS), under its body
    limit."""
    batch: list[Document] = []
    size = 0
    for document in documents:
        cost = len(json.dumps(document.item()).encode()) + 1
        if batch and (len(batch) == BATCH_DOCUMENTS or size + cost > BATCH_BODY_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(document)
        size += cost
    if batch:
        yield batch


class IngestError(RuntimeError):
    """The ingest API refused a request: the status code, and the body in the message."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        super().__init__(
            f"{response.request.method} {response.request.url}: HTTP {response.status_code}: {response.text[:500]}"
        )


class DocumentsRefused(IngestError):
    """Some documents of a batch were refused; `errors` holds each one's result (index, field, message)."""

    def __init__(self, response: httpx.Response, errors: list[dict[str, Any]]) -> None:
        super().__init__(response)
        self.errors = errors
        first = errors[0]["error"]
        self.args = (f"{len(errors)} document(s) refused; the first, {first['field']}: {first['message']}",)


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
    """The waiting rule, without I/O: which documents to check next, and how long to wait before checking
    again. Both clients drive it; see the module's description."""

    def __init__(
        self,
        document_ids: Iterable[str],
        states: Collection[str],
        timeout_s: float | None,
        interval_s: float,
        on_settled: Progress | None = None,
        window: int = STATUS_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ids = list(dict.fromkeys(document_ids))
        self.states, self.timeout_s, self.interval_s = frozenset(states), timeout_s, interval_s
        self.on_settled, self.window, self.clock = on_settled, window, clock
        self._size = window  # how many documents the next check reads
        self._settled: dict[str, Status] = {}
        self._deadline = None if timeout_s is None else clock() + timeout_s
        self._unavailable_since: float | None = None

    @property
    def settled(self) -> dict[str, Status]:
        """The settled documents' statuses, in accept order."""
        return {d: self._settled[d] for d in self.ids if d in self._settled}

    def pending(self) -> list[str]:
        return [d for d in self.ids if d not in self._settled]

    def next_ids(self) -> list[str]:
        """The documents to check now, earliest accepted first; empty once every document is settled."""
        return self.pending()[: self._size]

    def observe(self, statuses: Mapping[str, Status | None]) -> float:
        """The statuses of `next_ids()`: seconds to wait before the next check (0: a whole window had settled).
        Raises NotSettled once the timeout has passed."""
        self._unavailable_since = None
        waiting: Status | None = None
        settled = 0
        for document_id, status in statuses.items():
            if status is not None and status.get("status") in self.states:
                self._settled[document_id] = status
                settled += 1
                if self.on_settled:
                    self.on_settled(status)
            elif waiting is None:
                waiting = status or {"status": "unknown"}
        if waiting is None:
            self._size = min(2 * len(statuses), self.window)
            caught_up = len(statuses) == self.window or len(self._settled) == len(self.ids)
            return 0.0 if caught_up else self.interval_s
        # The next interval is likely to settle as many as this one did; the one more keeps a document that
        # takes long from hiding those behind it.
        self._size = settled + 1
        if self._deadline is not None and self.clock() >= self._deadline:
            raise NotSettled(self, waiting)
        return self.interval_s

    def unavailable(self, error: IngestError) -> float:
        """A check refused with `error`: the seconds to wait before checking again when it is a 503 (the API's
        dependency briefly away, e.g. MinIO slow to answer on a loaded machine), for up to UNAVAILABLE_GRACE_S
        in a row and within the timeout; else the error itself."""
        now = self.clock()
        if self._unavailable_since is None:
            self._unavailable_since = now
        past_deadline = self._deadline is not None and now >= self._deadline
        if error.status_code != 503 or past_deadline or now - self._unavailable_since >= UNAVAILABLE_GRACE_S:
            raise error
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

    def batch_url(self) -> str:
        return f"{self.base_url}/ingest/batch"

    def statuses_url(self) -> str:
        return f"{self.base_url}/ingest/status"

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

    @classmethod
    def accepted_ids(cls, response: httpx.Response) -> list[str]:
        """A batch's accepted document ids, in order; DocumentsRefused if any document was refused."""
        results = cls.json(response)["results"]
        refused = [result for result in results if result.get("error")]
        if refused:
            raise DocumentsRefused(response, refused)
        return [str(result["document_id"]) for result in results]

    @staticmethod
    def batch_body(namespace: str, documents: Iterable[Document]) -> dict[str, Any]:
        return {"namespace": namespace, "documents": [document.item() for document in documents]}

    @staticmethod
    def status_body(namespace: str, document_ids: list[str]) -> dict[str, Any]:
        return {"namespace": namespace, "document_ids": document_ids}


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

    def ingest_batch(self, namespace: str, documents: Iterable[Document]) -> dict[str, Any]:
        """POST /ingest/batch; the 202 body (accepted, rejected, a result per document)."""
        return self.json(self._post_batch(namespace, documents))

    def _post_batch(self, namespace: str, documents: Iterable[Document]) -> httpx.Response:
        return self.http.post(self.batch_url(), json=self.batch_body(namespace, documents), headers=self.headers)

    def status(self, namespace: str, document_id: str) -> Status:
        return self.json(
            self.http.get(self.status_url(document_id), params={"namespace": namespace}, headers=self.headers)
        )

    def statuses(self, namespace: str, document_ids: list[str]) -> dict[str, Status | None]:
        """POST /ingest/status: up to MAX_BATCH_DOCUMENTS documents' statuses (None: no such document)."""
        body = self.status_body(namespace, document_ids)
        answer: dict[str, Status | None] = self.json(
            self.http.post(self.statuses_url(), json=body, headers=self.headers)
        )["documents"]
        return answer

    def reindex(self, namespace: str) -> Status:
        """POST /namespaces/{namespace}/reindex: start re-indexing the namespace; its progress."""
        return self.json(self.http.post(self.reindex_url(namespace), headers=self.headers))

    def reindex_progress(self, namespace: str) -> Status:
        """GET /namespaces/{namespace}/reindex: how far its last re-index is."""
        return self.json(self.http.get(self.reindex_url(namespace), headers=self.headers))

    def ingest_all(self, namespace: str, documents: Iterable[Document]) -> list[str]:
        """The documents in batches; their ids in the order given. DocumentsRefused if any is refused."""
        return [d for batch in batches(documents) for d in self.accepted_ids(self._post_batch(namespace, batch))]

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
        while window := settling.next_ids():
            try:
                delay = settling.observe(self.statuses(namespace, window))
            except IngestError as error:
                delay = settling.unavailable(error)
            if delay:
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

    async def ingest_batch(self, namespace: str, documents: Iterable[Document]) -> dict[str, Any]:
        """POST /ingest/batch; the 202 body (accepted, rejected, a result per document)."""
        return self.json(await self._post_batch(namespace, documents))

    async def _post_batch(self, namespace: str, documents: Iterable[Document]) -> httpx.Response:
        body = self.batch_body(namespace, documents)
        return await self.http.post(self.batch_url(), json=body, headers=self.headers)

    async def status(self, namespace: str, document_id: str) -> Status:
        return self.json(await self.status_answer(namespace, document_id))

    async def status_answer(
        self, namespace: str, document_id: str, credentials: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """GET /ingest/{document_id} as the API answers it (its errors too), asked with `credentials` (the
        gateway passes its caller's) or the client's key; DependencyUnavailable("ingest-api") without an answer."""
        try:
            return await self.http.get(
                self.status_url(document_id), params={"namespace": namespace}, headers=credentials or self.headers
            )
        except httpx.TransportError as error:
            raise DependencyUnavailable("ingest-api", f"no answer ({type(error).__name__})") from error

    async def statuses(self, namespace: str, document_ids: list[str]) -> dict[str, Status | None]:
        """POST /ingest/status: up to MAX_BATCH_DOCUMENTS documents' statuses (None: no such document)."""
        body = self.status_body(namespace, document_ids)
        response = await self.http.post(self.statuses_url(), json=body, headers=self.headers)
        answer: dict[str, Status | None] = self.json(response)["documents"]
        return answer

    async def ingest_each(
        self, namespace: str, documents: Iterable[Document], concurrency: int = INGEST_CONCURRENCY
    ) -> list[str]:
        """Each document in a POST /ingest of its own, `concurrency` at a time; their ids in the order given."""
        gate = asyncio.Semaphore(concurrency)

        async def one(document: Document) -> str:
            async with gate:
                return str((await self.ingest(namespace, document))["document_id"])

        return list(await asyncio.gather(*(one(d) for d in documents)))

    async def ingest_all(
        self,
        namespace: str,
        documents: Iterable[Document],
        concurrency: int = BATCH_CONCURRENCY,
        on_accepted: Callable[[int], None] | None = None,
    ) -> list[str]:
        """The documents in batches, `concurrency` batches at a time; their ids in the order given.
        `on_accepted(n)` after each batch. DocumentsRefused if any document is refused."""
        gate = asyncio.Semaphore(concurrency)

        async def one(batch: list[Document]) -> list[str]:
            async with gate:
                accepted = self.accepted_ids(await self._post_batch(namespace, batch))
            if on_accepted:
                on_accepted(len(accepted))
            return accepted

        return [d for ids in await asyncio.gather(*(one(b) for b in batches(documents))) for d in ids]

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
        while window := settling.next_ids():
            try:
                delay = settling.observe(await self.statuses(namespace, window))
            except IngestError as error:
                delay = settling.unavailable(error)
            if delay:
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
