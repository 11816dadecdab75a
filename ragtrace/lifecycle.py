"""The document lifecycle: which request owns a document, and every write of its record.

One rule decides whether an event may act: **the event still owns the document when its record's status
names the event's request** (`owns`). Every request that changes a document (an upsert or a delete through
the ingest API) first makes itself the owner with a conditional write of the record, and only then announces
itself on Kafka; every later change of the record (indexed, duplicate, failed, deleted) is a conditional
write that checks ownership again. Two concurrent requests can therefore never both win, and whichever wins
last is the version that is stored, described and indexed:

- A version's text is written into the record by the same conditional write that makes its request the
  owner, so a request that loses never overwrites what the winner stored.
- Events are published after the record is written, so an event that a consumer sees is either the owner's,
  or was superseded before the consumer looked (and is skipped), or is superseded after the consumer looked
  (and the newer owner's event comes later in the same partition).
- A request whose event cannot be published gives ownership back (the previous record is restored) before
  its caller is told it failed; should its event still arrive, it owns nothing.

A new document costs three round trips to MinIO in all: the ingest API writes its record as a new one
(`accept`; only a record that is there already, a re-post or a new version, is then read and written), the
indexer reads it before the index write (`read_owned`) and writes the outcome against the ETag it read
(`settle`). Only when another writer got there in between does a write read again.

Everything here is synchronous MinIO I/O: async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from typing_extensions import TypeIs

from ragtrace.errors import ConcurrentUpdate
from ragtrace.schemas import DocumentRecord, DocumentRef, DocumentState, DocumentStatus, utcnow
from ragtrace.storage import Conflict, DocumentStore

# States in which a re-post of the same content needs no new work: done, and consistent.
SETTLED = (DocumentState.INDEXED, DocumentState.DUPLICATE)
# How many times a conditional write is retried against concurrent writers of the same document.
MAX_ATTEMPTS = 50


def owns(status: DocumentStatus | None, ref: DocumentRef) -> TypeIs[DocumentStatus]:
    """Does the event's request still own the document? The one rule every consumer applies."""
    return status is not None and status.ingest_id == ref.ingest_id


@dataclass(frozen=True)
class Claim:
    """What a request's write left in the record, and the record it replaced (the same when nothing changed)."""

    record: DocumentRecord
    previous: DocumentRecord | None

    @property
    def status(self) -> DocumentStatus:
        return self.record.status

    @property
    def changed(self) -> bool:
        return self.record is not self.previous


@dataclass(frozen=True)
class Owned:
    """A record as an event that owns the document read it, with the ETag its outcome is written against."""

    record: DocumentRecord
    etag: str


class DocumentLifecycle:
    def __init__(self, store: DocumentStore) -> None:
        self.store = store

    def status(self, namespace: str, document_id: str) -> DocumentStatus | None:
        record, _ = self.store.read(namespace, document_id)
        return record.status if record is not None else None

    # ingest API: taking and giving back ownership

    def accept(
        self,
        namespace: str,
        document_id: str,
        text: str,
        metadata: dict[str, Any],
        content_hash: str,
        accepted_at: datetime,
        trace_id: str = "",
        span_id: str = "",
    ) -> Claim:
        """Store the version and make a new request its owner, whatever the record says now; unless the record
        already holds this content, settled, which a re-post leaves as it is (`Claim.changed` is False).
        `trace_id`/`span_id`: the request's span, which the record keeps."""
        version = DocumentRecord(
            status=DocumentStatus(
                document_id=document_id,
                namespace=namespace,
                status=DocumentState.ACCEPTED,
                content_hash=content_hash,
                ingest_id=uuid.uuid4().hex,
                key=self.store.record_key(namespace, document_id),
                accepted_at=accepted_at,
                trace_id=trace_id or None,
                span_id=span_id or None,
            ),
            text=text,
            metadata=metadata,
        )

        def accepted(current: DocumentRecord | None) -> DocumentRecord | None:
            return None if current is not None and _settled_with(current, content_hash) else version

        # Most posts are of new documents: write first, and read only if a record was there after all.
        previous, written = self._replace(namespace, document_id, accepted, expect_none=True)
        if written is None and previous is not None:
            return Claim(previous, previous)
        return Claim(written or version, previous)

    def begin_delete(self, namespace: str, document_id: str) -> Claim | None:
        """Make a new deletion request the owner; None if there is no document to delete."""
        ingest_id = uuid.uuid4().hex

        def deleting(current: DocumentRecord | None) -> DocumentRecord | None:
            if current is None or current.status.status is DocumentState.DELETED:
                return None
            status = current.status.model_copy(
                update={"status": DocumentState.DELETING, "ingest_id": ingest_id, "updated_at": utcnow(), "error": None}
            )
            return DocumentRecord(status=status)  # the text goes with the request that deletes it

        previous, written = self._replace(namespace, document_id, deleting)
        return Claim(written, previous) if written is not None else None

    def give_back(self, claim: Claim, reason: str) -> None:
        """The claim's event could not be published: restore what it replaced (a new document becomes
        `failed`), unless a newer request owns the document by now."""
        status = claim.status

        def restored(current: DocumentRecord | None) -> DocumentRecord | None:
            if current is None or not owns(current.status, _ref(status)):
                return None
            if claim.previous is not None:
                return _moved(claim.previous, claim.previous.status.status)
            failed = DocumentStatus(
                document_id=status.document_id,
                namespace=status.namespace,
                status=DocumentState.FAILED,
                content_hash=status.content_hash,
                error=f"not accepted: {reason}",
            )
            return DocumentRecord(status=failed)

        self._replace(status.namespace, status.document_id, restored)

    # workers: the owner's outcome

    def read_owned(self, ref: DocumentRef) -> Owned | None:
        """The document's record, if the event's request still owns it."""
        record, etag = self.store.read(ref.namespace, ref.document_id)
        if record is None or etag is None or not owns(record.status, ref):
            return None
        return Owned(record, etag)

    def settle(self, ref: DocumentRef, owned: Owned, state: DocumentState, **fields: object) -> bool:
        """Write the event's outcome into the record it read; if the record changed since (an earlier
        delivery's outcome, a newer request), decide again on what it says now. True if it was written."""
        try:
            self.store.write(_moved(owned.record, state, **fields), owned.etag)
        except Conflict:
            return self.transition(ref, state, **fields)
        return True

    def transition(self, ref: DocumentRef, state: DocumentState, **fields: object) -> bool:
        """Move the document to `state` if the event's request still owns it; True if it did."""

        def moved(current: DocumentRecord | None) -> DocumentRecord | None:
            return _moved(current, state, **fields) if current is not None and owns(current.status, ref) else None

        _, written = self._replace(ref.namespace, ref.document_id, moved)
        return written is not None

    def fail(self, ref: DocumentRef, error: Exception) -> bool:
        """The event went to the dead-letter topic: its document is `failed`, with the error, if the event's
        request still owns it."""
        return self.transition(ref, DocumentState.FAILED, error=f"{type(error).__name__}: {error}")

    # plumbing

    def _replace(
        self,
        namespace: str,
        document_id: str,
        change: Callable[[DocumentRecord | None], DocumentRecord | None],
        expect_none: bool = False,
    ) -> tuple[DocumentRecord | None, DocumentRecord | None]:
        """Read the record, ask `change` for its successor (None: leave it as it is), write that conditionally,
        and start again when another writer got there first. `expect_none`: the first attempt skips the read and
        writes as if there were no record (If-None-Match), which a record that exists refuses. Returns the
        record read last and the one written (None if none was)."""
        if expect_none and (successor := change(None)) is not None:
            try:
                self.store.write(successor, None)
                return None, successor
            except Conflict:
                pass
        for _ in range(MAX_ATTEMPTS):
            current, etag = self.store.read(namespace, document_id)
            successor = change(current)
            if successor is None:
                return current, None
            try:
                self.store.write(successor, etag)
            except Conflict:
                continue
            return current, successor
        raise ConcurrentUpdate(f"document '{document_id}' in namespace '{namespace}' is being changed concurrently")


def _moved(record: DocumentRecord, state: DocumentState, **fields: object) -> DocumentRecord:
    status = record.status.model_copy(update={**fields, "status": state, "updated_at": utcnow()})
    return record.model_copy(update={"status": status})


def _settled_with(record: DocumentRecord, content_hash: str) -> bool:
    return record.status.content_hash == content_hash and record.status.status in SETTLED


def _ref(status: DocumentStatus) -> DocumentRef:
    return DocumentRef(document_id=status.document_id, namespace=status.namespace, ingest_id=status.ingest_id or "")
