"""Re-index jobs: a namespace's documents rebuilt into a new generation of its index (docs/reindex.md).

The job record (`_reindex/{namespace}.json` in the documents bucket, `ReindexJob`) is the one place that
says a re-index of the namespace runs: it is only written conditionally, so two requests can never both start
one. It lists the documents the job rebuilds; how many are done is read from the building generation itself.
Which documents may be rebuilt, and into what, is decided here too (`rebuildable`, `reindex_event`).

Everything here is synchronous MinIO I/O: async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

from collections.abc import Callable

from ragtrace.errors import ConcurrentUpdate
from ragtrace.lifecycle import MAX_ATTEMPTS
from ragtrace.schemas import (
    DocumentEvent,
    DocumentRecord,
    DocumentRef,
    DocumentState,
    ReindexJob,
    ReindexState,
    utcnow,
)
from ragtrace.storage import Conflict, DocumentStore

JOBS = "_reindex/"  # `_` is in no namespace's name: no document's record is ever under it


def rebuildable(record: DocumentRecord | None) -> bool:
    """A document a re-index rebuilds: its version is indexed, or on its way there (its own event then takes
    it into the new generation too; see ragtrace/vectorstore/generations.py). A duplicate holds no chunks."""
    return (
        record is not None
        and record.text is not None
        and record.status.status in (DocumentState.INDEXED, DocumentState.ACCEPTED)
    )


def reindex_event(record: DocumentRecord, generation: int) -> DocumentEvent:
    """The re-index event of a document: its owner's version, for `generation`. It carries the owner's
    ingest id, so that a newer request about the document makes it stale (ragtrace/lifecycle.py)."""
    return DocumentEvent.upsert(record.status, record.text, record.metadata, generation)


class ReindexJobs:
    def __init__(self, store: DocumentStore) -> None:
        self.store = store

    @staticmethod
    def key(namespace: str) -> str:
        return f"{JOBS}{namespace}.json"

    def namespaces(self) -> list[str]:
        """The namespaces that have a job record, whatever its state."""
        return self.store.names(JOBS)

    def read(self, namespace: str) -> tuple[ReindexJob | None, str | None]:
        data, etag = self.store.read_object(self.key(namespace))
        return (ReindexJob.model_validate_json(data), etag) if data is not None else (None, None)

    def write(self, job: ReindexJob, etag: str | None) -> None:
        """Write the job if its record is still the one read with `etag` (None: there is none), else Conflict."""
        self.store.write_object(self.key(job.namespace), job.model_dump_json().encode(), etag)

    def update(self, namespace: str, change: Callable[[ReindexJob], ReindexJob | None]) -> ReindexJob | None:
        """Write `change`'s successor of the job (None: leave it), again on a concurrent write; the job written."""
        for _ in range(MAX_ATTEMPTS):
            job, etag = self.read(namespace)
            successor = change(job) if job is not None else None
            if successor is None:
                return None
            try:
                self.write(successor, etag)
            except Conflict:
                continue
            return successor
        raise ConcurrentUpdate(f"the re-index job of namespace '{namespace}' is being changed concurrently")

    def record_failure(self, ref: DocumentRef, error: Exception) -> None:
        """A re-index event went to the dead-letter topic: its job says so (the document's record is left as
        it is: the serving generation still holds the document)."""

        def failed(job: ReindexJob) -> ReindexJob | None:
            if job.generation != ref.generation or job.state is not ReindexState.RUNNING:
                return None
            return job.model_copy(
                update={"failed": {**job.failed, ref.document_id: f"{type(error).__name__}: {error}"}}
            )

        self.update(ref.namespace, failed)

    def finish(self, namespace: str, generation: int, state: ReindexState) -> ReindexJob | None:
        def finished(job: ReindexJob) -> ReindexJob | None:
            if job.generation != generation or job.state is not ReindexState.RUNNING:
                return None
            return job.model_copy(update={"state": state, "finished_at": utcnow()})

        return self.update(namespace, finished)
