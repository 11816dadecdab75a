"""The ingest API's routes: HTTP in and out, the work in `Ingestion` (ingest/ingestion.py). Domain errors
become HTTP answers in ragtrace/http.py (DocumentNotFound 404, ConcurrentUpdate 409 with Retry-After,
DependencyUnavailable 503 naming the dependency); an upload's own problems are answered here (415, 422)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, UploadFile, status
from pydantic import ValidationError

from ingest.deps import IngestionDep, ReindexingDep
from ingest.extract import UnreadableFile, UnsupportedFileType, extract_text
from ragtrace.auth import Authenticated
from ragtrace.schemas import (
    DocumentId,
    DocumentMetadata,
    DocumentStatus,
    IngestAccepted,
    IngestRequest,
    Namespace,
    ReindexProgress,
)

router = APIRouter(tags=["ingest"])

NamespaceQuery = Annotated[Namespace, Query()]
NamespacePath = Annotated[Namespace, Path()]


@router.post("/ingest", status_code=status.HTTP_202_ACCEPTED, response_model=IngestAccepted)
async def ingest(request: IngestRequest, principal: Authenticated, ingestion: IngestionDep) -> IngestAccepted:
    """Accept a document: stored in MinIO, then announced on Kafka for embedding and indexing."""
    principal.authorize(request.namespace)
    return await ingestion.accept(request.namespace, request.document_id, request.text, request.metadata.model_dump())


@router.post("/ingest/file", status_code=status.HTTP_202_ACCEPTED, response_model=IngestAccepted)
async def ingest_file(
    principal: Authenticated,
    ingestion: IngestionDep,
    file: Annotated[UploadFile, File(description=".txt, .md, .html or .pdf")],
    namespace: Annotated[Namespace, Form()] = "default",
    document_id: Annotated[DocumentId | None, Form()] = None,
    title: Annotated[str | None, Form()] = None,
    metadata: Annotated[str | None, Form(description="JSON object of extra metadata")] = None,
) -> IngestAccepted:
    """Accept an uploaded file; its text is extracted first."""
    principal.authorize(namespace)
    try:
        text, suggested_title = extract_text(file.filename or "upload", await file.read())
    except UnsupportedFileType as error:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, str(error)) from error
    except UnreadableFile as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from error
    try:
        extra = json.loads(metadata) if metadata else {}
        if not isinstance(extra, dict):
            raise ValueError("metadata must be a JSON object")
        request = IngestRequest(
            text=text,
            namespace=namespace,
            document_id=document_id,
            metadata=DocumentMetadata(**{**extra, "title": title or suggested_title}),
        )
    except (ValueError, ValidationError) as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid upload: {error}") from error
    return await ingestion.accept(request.namespace, request.document_id, request.text, request.metadata.model_dump())


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
