"""Ingest API: accepts documents, stores them in MinIO, announces them on Kafka.

Run: `python -m ingest.app` (127.0.0.1:8082 by default).

Order of effects for POST /ingest: the version's raw text to MinIO → the status record names this request
as the document's owner (`accepted`, a conditional write) → event to Kafka (keyed by namespace/document_id,
idempotent producer, acks=all). If the event cannot be published the answer is 503 naming Kafka and the
previous status record is restored (a new document's becomes `failed`), so the refused request owns nothing
and an event the producer still delivers after the 503 has no effect; no document is reported accepted
without its event. Concurrent posts of one document end with the last accepted version stored, described
and indexed (ragtrace/lifecycle.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi import status as status_code
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.extract import UnreadableFile, UnsupportedFileType, extract_text
from ragtrace.auth import Authenticated
from ragtrace.errors import DependencyUnavailable
from ragtrace.http import create_service_app
from ragtrace.lifecycle import SETTLED, Claim, DocumentLifecycle
from ragtrace.messaging import Publisher, documents_publisher
from ragtrace.runtime import document_store, run_http_service
from ragtrace.schemas import (
    DocumentEvent,
    DocumentId,
    DocumentMetadata,
    DocumentStatus,
    EventType,
    IngestAccepted,
    IngestRequest,
    Namespace,
    StoredDocument,
    content_hash,
    message_key,
    utcnow,
)
from ragtrace.settings import KafkaSettings
from ragtrace.storage import DocumentStore
from ragtrace.telemetry import trace_id_hex

tracer = trace.get_tracer("ragtrace.ingest")
log = logging.getLogger(__name__)

T = TypeVar("T")


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_INGEST_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8082
    max_body_bytes: int = 10 * 1024 * 1024


def _not_found(namespace: str, document_id: str) -> HTTPException:
    return HTTPException(status_code.HTTP_404_NOT_FOUND, f"no document '{document_id}' in namespace '{namespace}'")


class Ingestion:
    """The ingest use cases, over the document lifecycle and the event publisher."""

    def __init__(self, store: DocumentStore, publisher: Publisher, kafka: KafkaSettings) -> None:
        self.store = store
        self.lifecycle = DocumentLifecycle(store)
        self.publisher = publisher
        self.kafka = kafka
        self._bucket_ready = False

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        if not self._bucket_ready:
            await asyncio.to_thread(self.store.ensure_bucket)
            self._bucket_ready = True
        return await asyncio.to_thread(function, *args)

    async def accept(
        self, namespace: str, document_id: str | None, text: str, metadata: dict[str, Any]
    ) -> JSONResponse:
        document_id = document_id or uuid.uuid4().hex
        digest = content_hash(text)
        span = trace.get_current_span()
        span.set_attributes({"document.id": document_id, "ragtrace.namespace": namespace})
        current = await self._call(self.lifecycle.status, namespace, document_id)
        if current is not None and current.content_hash == digest and current.status in SETTLED:
            span.set_attribute("ragtrace.unchanged", True)
            return self._accepted(current)
        document = StoredDocument(
            document_id=document_id,
            namespace=namespace,
            text=text,
            metadata=metadata,
            content_hash=digest,
            ingested_at=utcnow(),
            ingest_id=uuid.uuid4().hex,
        )
        key = self.store.version_key(namespace, document_id, document.ingest_id)
        with tracer.start_as_current_span(
            "upload document", attributes={"ragtrace.bucket": self.store.bucket, "ragtrace.key": key}
        ):
            claim = await self._call(self.lifecycle.accept, document)
        event = DocumentEvent(
            type=EventType.UPSERT,
            document_id=document_id,
            namespace=namespace,
            ingest_id=document.ingest_id,
            content_hash=digest,
            bucket=self.store.bucket,
            key=key,
            accepted_at=document.ingested_at,
        )
        await self._publish(event, claim)
        log.info("accepted document %s in namespace %s (%d characters)", document_id, namespace, len(text))
        return self._accepted(claim.status)

    async def delete(self, namespace: str, document_id: str) -> DocumentStatus:
        claim = await self._call(self.lifecycle.begin_delete, namespace, document_id)
        if claim is None:
            raise _not_found(namespace, document_id)
        event = DocumentEvent(
            type=EventType.DELETE,
            document_id=document_id,
            namespace=namespace,
            ingest_id=claim.status.ingest_id or "",
            accepted_at=claim.status.updated_at,
        )
        await self._publish(event, claim)
        return claim.status

    async def _publish(self, event: DocumentEvent, claim: Claim) -> None:
        """Announce the claim on Kafka. Refused: ownership goes back before the caller hears of it, so the
        event, should the producer still deliver it, finds nothing to act on."""
        try:
            await self.publisher.publish(
                self.kafka.documents_topic, message_key(event.namespace, event.document_id), event
            )
        except DependencyUnavailable as error:
            await self._call(self.lifecycle.give_back, claim, str(error))
            raise
        await self._call(self.lifecycle.committed, claim)

    async def status_of(self, namespace: str, document_id: str) -> DocumentStatus:
        current = await self._call(self.lifecycle.status, namespace, document_id)
        if current is None:
            raise _not_found(namespace, document_id)
        return current

    def _accepted(self, status: DocumentStatus) -> JSONResponse:
        body = IngestAccepted(
            document_id=status.document_id,
            namespace=status.namespace,
            status=status.status,
            bucket=self.store.bucket,
            key=status.key or "",
            content_hash=status.content_hash or "",
            trace_id=trace_id_hex(),
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=status_code.HTTP_202_ACCEPTED)

    async def check_minio(self) -> None:
        await asyncio.to_thread(self.store.ensure_bucket)


def create_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    kafka = KafkaSettings()
    publisher = documents_publisher(kafka)
    ingestion = Ingestion(document_store(), publisher, kafka)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        publisher.start_warm_up()
        yield
        await publisher.close()

    app = create_service_app(
        "ragtrace ingest",
        settings.max_body_bytes,
        readiness={"kafka": publisher.check, "minio": ingestion.check_minio},
        lifespan=lifespan,
    )

    @app.post("/ingest", status_code=202, response_model=IngestAccepted, tags=["ingest"])
    async def ingest(request: IngestRequest, principal: Authenticated) -> JSONResponse:
        """Accept a document: stored in MinIO, then announced on Kafka for embedding and indexing."""
        principal.authorize(request.namespace)
        return await ingestion.accept(
            request.namespace, request.document_id, request.text, request.metadata.model_dump()
        )

    @app.post("/ingest/file", status_code=202, response_model=IngestAccepted, tags=["ingest"])
    async def ingest_file(
        principal: Authenticated,
        file: Annotated[UploadFile, File(description=".txt, .md, .html or .pdf")],
        namespace: Annotated[Namespace, Form()] = "default",
        document_id: Annotated[DocumentId | None, Form()] = None,
        title: Annotated[str | None, Form()] = None,
        metadata: Annotated[str | None, Form(description="JSON object of extra metadata")] = None,
    ) -> JSONResponse:
        """Accept an uploaded file; its text is extracted first."""
        principal.authorize(namespace)
        try:
            text, suggested_title = extract_text(file.filename or "upload", await file.read())
        except UnsupportedFileType as error:
            raise HTTPException(status_code.HTTP_415_UNSUPPORTED_MEDIA_TYPE, str(error)) from error
        except UnreadableFile as error:
            raise HTTPException(422, str(error)) from error
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
            raise HTTPException(422, f"invalid upload: {error}") from error
        return await ingestion.accept(
            request.namespace, request.document_id, request.text, request.metadata.model_dump()
        )

    @app.get("/ingest/{document_id}", response_model=DocumentStatus, tags=["ingest"])
    async def document_status(
        document_id: DocumentId, principal: Authenticated, namespace: Annotated[Namespace, Query()] = "default"
    ) -> DocumentStatus:
        """Where a document is: accepted, processing, indexed, duplicate, failed, deleting or deleted."""
        principal.authorize(namespace)
        return await ingestion.status_of(namespace, document_id)

    @app.delete("/documents/{document_id}", status_code=202, response_model=DocumentStatus, tags=["ingest"])
    async def delete_document(
        document_id: DocumentId, principal: Authenticated, namespace: Annotated[Namespace, Query()] = "default"
    ) -> DocumentStatus:
        """Remove a document's chunks from the index (through the same event flow) and mark it deleted."""
        principal.authorize(namespace)
        return await ingestion.delete(namespace, document_id)

    return app


def main() -> None:
    settings = IngestSettings()
    run_http_service("ingest-api", lambda: create_app(settings), settings.host, settings.port)


if __name__ == "__main__":
    main()
