"""The document lifecycle: which request owns a document, and every write of its status record.

One rule decides whether an event may act: **the event still owns the document when the status record names
its request** (`owns`). Every request that changes a document (an upsert or a delete through the ingest API)
first makes itself the owner with a conditional write of the status record, and only then announces itself
on Kafka; every later change of the record (processing, indexed, failed, deleted) is a conditional write that
checks ownership again. Two concurrent requests can therefore never both win, and whichever wins last is the
version that is stored, described and indexed:

- A version's raw text is written once under its own key (`{namespace}/{document_id}/{ingest_id}.json`), so a
  request that loses never overwrites what the winner stored.
- Events are published after the status write, so an event that a consumer sees is either the owner's, or was
  superseded before the consumer looked (and is skipped), or is superseded after the consumer looked (and the
  newer owner's event comes later in the same partition).
- A request whose event cannot be published gives ownership back (the previous record is restored) before
  its caller is told it failed; should its event still arrive, it owns nothing.

Everything here is synchronous MinIO I/O: async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from typing_extensions import TypeIs

from ragtrace.errors import ConcurrentUpdate, DependencyUnavailable
from ragtrace.schemas import DocumentRef, DocumentState, DocumentStatus, StoredDocument, utcnow
from ragtrace.storage import Conflict, DocumentStore

log = logging.getLogger(__name__)

# States in which a re-post of the same content needs no new work: done, and consistent.
SETTLED = (DocumentState.INDEXED, DocumentState.DUPLICATE)
# States in which a document's content is (or is about to be) in the index.
LIVE = (DocumentState.ACCEPTED, DocumentState.PROCESSING, DocumentState.INDEXED)
# How many times a conditional write is retried against concurrent writers of the same document.
MAX_ATTEMPTS = 50


def owns(status: DocumentStatus | None, ref: DocumentRef) -> TypeIs[DocumentStatus]:
    """Does the event's request still own the document? The one rule every consumer applies."""
    return status is not None and status.ingest_id == ref.ingest_id


@dataclass(frozen=True)
class Claim:
    """A request that made itself the document's owner, and the record it replaced."""

    status: DocumentStatus
    previous: DocumentStatus | None


class DocumentLifecycle:
    def __init__(self, store: DocumentStore) -> None:
        self.store = store

    def status(self, namespace: str, document_id: str) -> DocumentStatus | None:
        return self.store.get_status(namespace, document_id)

    # ingest API: taking and giving back ownership

    def accept(self, document: StoredDocument) -> Claim:
        """Store the version, then make its request the owner, whatever the record says now."""
        key = self.store.put_version(document)
        accepted = DocumentStatus(
            document_id=document.document_id,
            namespace=document.namespace,
            status=DocumentState.ACCEPTED,
            content_hash=document.content_hash,
            ingest_id=document.ingest_id,
            key=key,
            accepted_at=document.ingested_at,
        )
        previous, _ = self._replace(document.namespace, document.document_id, lambda _: accepted)
        return Claim(accepted, previous)

    def begin_delete(self, namespace: str, document_id: str) -> Claim | None:
        """Make a new deletion request the owner; None if there is no document to delete."""
        ingest_id = uuid.uuid4().hex

        def deleting(current: DocumentStatus | None) -> DocumentStatus | None:
            if current is None or current.status is DocumentState.DELETED:
                return None
            return current.model_copy(
                update={"status": DocumentState.DELETING, "ingest_id": ingest_id, "updated_at": utcnow(), "error": None}
            )

        previous, status = self._replace(namespace, document_id, deleting)
        return Claim(status, previous) if status is not None else None

    def committed(self, claim: Claim) -> None:
        """The claim's event is on Kafka: the version it replaced is no longer needed (best effort)."""
        superseded = claim.previous.key if claim.previous is not None else None
        if claim.status.status is DocumentState.ACCEPTED and superseded and superseded != claim.status.key:
            self._remove_quietly(superseded)

    def give_back(self, claim: Claim, reason: str) -> None:
        """The claim's event could not be published: restore what it replaced (a new document becomes
        `failed`), unless a newer request owns the document by now, and drop the version it stored."""

        def restored(current: DocumentStatus | None) -> DocumentStatus | None:
            if not owns(current, _ref(claim.status)):
                return None
            if claim.previous is not None:
                return claim.previous.model_copy(update={"updated_at": utcnow()})
            return DocumentStatus(
                document_id=claim.status.document_id,
                namespace=claim.status.namespace,
                status=DocumentState.FAILED,
                content_hash=claim.status.content_hash,
                error=f"not accepted: {reason}",
            )

        self._replace(claim.status.namespace, claim.status.document_id, restored)
        if claim.status.status is DocumentState.ACCEPTED and claim.status.key:
            self._remove_quietly(claim.status.key)

    # workers: transitions of the owner's record

    def transition(self, ref: DocumentRef, state: DocumentState, **fields: object) -> bool:
        """Move the document to `state` if the event's request still owns it; True if it did."""

        def moved(current: DocumentStatus | None) -> DocumentStatus | None:
            if not owns(current, ref):
                return None
            return current.model_copy(update={**fields, "status": state, "updated_at": utcnow()})

        _, written = self._replace(ref.namespace, ref.document_id, moved)
        return written is not None

    def fail(self, ref: DocumentRef, error: Exception) -> bool:
        """The event went to the dead-letter topic: its document is `failed`, with the error, if the event's
        request still owns it."""
        return self.transition(ref, DocumentState.FAILED, error=f"{type(error).__name__}: {error}")

    def finish_delete(self, ref: DocumentRef) -> bool:
        """The index no longer has the document: drop its version and its content claim, mark it deleted.
        Only for the document's current deletion request; True if it was that."""
        status = self.store.get_status(ref.namespace, ref.document_id)
        if not owns(status, ref) or status.status is not DocumentState.DELETING:
            return False
        if status.content_hash:
            self.store.release_hash(ref.namespace, status.content_hash, ref.document_id)
        if status.key:
            self.store.remove(status.key)
        return self.transition(ref, DocumentState.DELETED, chunks=0)

    def read_version(self, ref: DocumentRef, key: str) -> StoredDocument | None:
        """The stored version an event points to, if it is still there and still the event's."""
        document = self.store.get_version(key)
        return document if document is not None and document.ingest_id == ref.ingest_id else None

    # plumbing

    def _replace(
        self, namespace: str, document_id: str, change: Callable[[DocumentStatus | None], DocumentStatus | None]
    ) -> tuple[DocumentStatus | None, DocumentStatus | None]:
        """Read the record, ask `change` for its successor (None: leave it as it is), write that conditionally,
        and start again when another writer got there first. Returns the record read last and the one written
        (None if none was)."""
        for _ in range(MAX_ATTEMPTS):
            current, etag = self.store.read_status(namespace, document_id)
            successor = change(current)
            if successor is None:
                return current, None
            try:
                self.store.write_status(successor, etag)
            except Conflict:
                continue
            return current, successor
        raise ConcurrentUpdate(f"document '{document_id}' in namespace '{namespace}' is being changed concurrently")

    def _remove_quietly(self, key: str) -> None:
        try:
            self.store.remove(key)
        except DependencyUnavailable as error:  # an orphaned version costs storage, never correctness
            log.warning("could not remove superseded version %s: %s", key, error)


def _ref(status: DocumentStatus) -> DocumentRef:
    return DocumentRef(document_id=status.document_id, namespace=status.namespace, ingest_id=status.ingest_id or "")
