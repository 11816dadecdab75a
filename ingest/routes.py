"""The ingest API's routes: HTTP in and out, the work in `Ingestion` (ingest/ingestion.py). Domain errors
become HTTP answers in ragtrace/http.py (DocumentNotFound 404, ConcurrentUpdate 409 with Retry-After,
DependencyUnavailable 503 naming the dependency); a body's own problems are answered here (413, 415, 422).
Every way in validates a document with the one `DocumentInput` (ragtrace/schemas.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status

from ingest.bodies import BATCH_BODY, FILE_BODY, parse_batch, parse_upload
from ingest.deps import IngestionDep, ReindexingDep
from ragtrace.auth import Authenticated
from ragtrace.errors import ConcurrentUpdate
from ragtrace.schemas import (
    BatchItemResult,
    DocumentId,
    DocumentStatus,
    IngestAccepted,
    IngestBatchAccepted,
    IngestRequest,
    ItemError,
    Namespace,
    ReindexProgress,
    StatusAnswer,
    StatusQuery,
)

router = APIRouter(tags=["ingest"])

NamespaceQuery = Annotated[Namespace, Query()]
NamespacePath = Annotated[Namespace, Path()]


@router.post("/ingest", status_code=status.HTTP_202_ACCEPTED, response_model=IngestAccepted)
async def ingest(request: IngestRequest, principal: Authenticated, ingestion: IngestionDep) -> IngestAccepted:
    """Accept a document: stored in MinIO, then announced on Kafka for embedding and indexing."""
    principal.authorize(request.namespace)
    return await ingestion.accept(request.namespace, request.document_id, request.text, request.metadata.model_dump())


@router.post(
    "/ingest/batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IngestBatchAccepted,
    openapi_extra=BATCH_BODY,
)
async def ingest_batch(
    request: Request,
    principal: Authenticated,
    ingestion: IngestionDep,
    namespace: Annotated[Namespace | None, Query(description="NDJSON bodies only: the documents' namespace")] = None,
) -> IngestBatchAccepted:
    """Accept up to 1,000 documents (JSON, or NDJSON: one document per line). Each is answered in its own
    result, by position: accepted (with its own trace) or refused (naming its field); one bad document never
    fails the others. A dependency that is down fails the whole request (503), every document either
    announced or given back, so the same request can simply be sent again."""
    batch = parse_batch(request.headers.get("content-type", ""), await request.body(), namespace)
    principal.authorize(batch.namespace)
    valid = batch.valid()
    outcomes = await ingestion.accept_batch(batch.namespace, [document for _, document in valid])
    results = {index: _refused(index, error) for index, error in batch.errors.items()}
    for (index, _), outcome in zip(valid, outcomes, strict=True):
        results[index] = (
            _refused(index, _conflict(index, outcome)) if isinstance(outcome, Exception) else _accepted(index, outcome)
        )
    ordered = [results[index] for index in range(batch.size)]
    accepted = sum(result.error is None for result in ordered)
    return IngestBatchAccepted(accepted=accepted, rejected=batch.size - accepted, results=ordered)


@router.post("/ingest/status", response_model=StatusAnswer)
async def statuses(query: StatusQuery, principal: Authenticated, ingestion: IngestionDep) -> StatusAnswer:
    """Up to 1,000 documents' statuses at once (null: no such document): a bulk ingest's progress, and what a
    rerun need not send again (settled with the same content hash)."""
    principal.authorize(query.namespace)
    return StatusAnswer(documents=await ingestion.statuses(query.namespace, query.document_ids))


@router.post(
    "/ingest/file", status_code=status.HTTP_202_ACCEPTED, response_model=IngestAccepted, openapi_extra=FILE_BODY
)
async def ingest_file(request: Request, principal: Authenticated, ingestion: IngestionDep) -> IngestAccepted:
    """Accept an uploaded file (.txt, .md, .html or .pdf); its text is extracted first. Its form fields are
    read as UTF-8, strictly, and the document is validated as POST /ingest's."""
    upload = parse_upload(request.headers.get("content-type", ""), await request.body())
    principal.authorize(upload.namespace)
    return await ingestion.accept(upload.namespace, upload.document_id, upload.text, upload.metadata.model_dump())


@router.get("/ingest/{document_id}", response_model=DocumentStatus)
async def document_status(
    document_id: DocumentId, principal: Authenticated, ingestion: IngestionDep, namespace: NamespaceQuery = "default"
) -> DocumentStatus:
    """Where a document is: accepted, indexed, duplicate, failed, deleting or deleted."""
    principal.authorize(namespace)
    return await ingestion.status_of(namespace, document_id)


@router.delete("/documents/{document_id}", status_code=status.HTTP_202_ACCEPTED, response_model=DocumentStatus)
async def delete_document(
    document_id: DocumentId, principal: Authenticated, ingestion: IngestionDep, namespace: NamespaceQuery = "default"
) -> DocumentStatus:
    """Remove a document's chunks from the index (through the same event flow) and mark it deleted."""
    principal.authorize(namespace)
    return await ingestion.delete(namespace, document_id)


@router.post("/namespaces/{namespace}/reindex", status_code=status.HTTP_202_ACCEPTED, response_model=ReindexProgress)
async def reindex(namespace: NamespacePath, principal: Authenticated, reindexing: ReindexingDep) -> ReindexProgress:
    """Re-chunk and re-embed every live document of the namespace, from what MinIO stores, into a new
    generation of its index, with the current chunking and model settings: searches are answered from the
    current generation until the new one holds every document, then from the new one (docs/reindex.md). A
    failed re-index is retried; 409 while one runs, 404 for a namespace without documents."""
    principal.authorize(namespace)
    return await reindexing.start(namespace)


@router.get("/namespaces/{namespace}/reindex", response_model=ReindexProgress)
async def reindex_progress(
    namespace: NamespacePath, principal: Authenticated, reindexing: ReindexingDep
) -> ReindexProgress:
    """How far the namespace's last re-index is: documents done of the total, failures, and its state."""
    principal.authorize(namespace)
    return await reindexing.progress(namespace)


def _accepted(index: int, accepted: IngestAccepted) -> BatchItemResult:
    return BatchItemResult(
        index=index,
        document_id=accepted.document_id,
        status=accepted.status,
        content_hash=accepted.content_hash,
        trace_id=accepted.trace_id,
    )


def _conflict(index: int, error: ConcurrentUpdate) -> ItemError:
    return ItemError(field=f"documents[{index}]", message=f"{error}: send it again")


def _refused(index: int, error: ItemError) -> BatchItemResult:
    return BatchItemResult(index=index, error=error)
