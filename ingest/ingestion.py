"""The ingest use cases, free of HTTP: accept a version of a document, delete it, say where it is.

Order of effects for an accepted version: one conditional write of the document's record in MinIO stores
its text and names this request as the document's owner (`accepted`) → event to Kafka, carrying the text
(keyed by namespace/document_id, idempotent producer, acks=all). If the event cannot be published,
DependencyUnavailable("kafka") is raised after the previous record is restored (a new document's becomes
`failed`), so the refused request owns nothing and an event the producer still delivers afterwards has no
effect; no document is reported accepted without its event. Concurrent posts of one document end with the
last accepted version stored, described and indexed (ragtrace/lifecycle.py). Errors are the domain's
(DocumentNotFound, DependencyUnavailable, ConcurrentUpdate): ragtrace/http.py maps each to its HTTP answer.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from opentelemetry import trace
from opentelemetry.context import Context

from ragtrace.errors import ConcurrentUpdate, DependencyUnavailable, DocumentNotFound
from ragtrace.lifecycle import Claim, DocumentLifecycle
from ragtrace.messaging import Publisher
from ragtrace.schemas import (
    DocumentEvent,
    DocumentInput,
    DocumentStatus,
    EventType,
    IngestAccepted,
    content_hash,
    message_key,
    utcnow,
)
from ragtrace.settings import KafkaSettings
from ragtrace.storage import DocumentStore
from ragtrace.telemetry import span_id_hex, trace_id_hex

tracer = trace.get_tracer("ragtrace.ingest")
log = logging.getLogger(__name__)

T = TypeVar("T")


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
    ) -> IngestAccepted:
        """Store the version and announce it; a re-post of settled, unchanged content changes nothing."""
        span = trace.get_current_span()
        claim = await self._claim(span, namespace, document_id, text, metadata)
        if claim.changed:
            await self._publish(DocumentEvent.upsert(claim.status, text, metadata), claim)
        return self._accepted(claim.status, span)

    async def accept_batch(
        self, namespace: str, documents: Sequence[DocumentInput]
    ) -> list[IngestAccepted | ConcurrentUpdate]:
        """Each document as `accept` would, each in a trace of its own that the request's span links to (and
        that links back to it): records written concurrently, then the changed ones announced together (the
        producer sends them in one request per partition). Results by position; a document that too many
        concurrent writers kept from its record gets its ConcurrentUpdate. A dependency that is down raises
        DependencyUnavailable once every document is either announced or given back."""
        request = trace.get_current_span()
        request.set_attributes({"ragtrace.namespace": namespace, "messaging.batch.message_count": len(documents)})
        spans = [
            tracer.start_span(
                "ingest document",
                context=Context(),  # a new trace per document, as if it had been posted alone
                links=[trace.Link(request.get_span_context(), {"ragtrace.batch.index": index})],
            )
            for index in range(len(documents))
        ]
        for span in spans:
            request.add_link(span.get_span_context())
        try:
            claims = await asyncio.gather(
                *(
                    self._claim(span, namespace, doc.document_id, doc.text, doc.metadata.model_dump())
                    for span, doc in zip(spans, documents, strict=True)
                ),
                return_exceptions=True,
            )
            changed = [
                (span, DocumentEvent.upsert(claim.status, doc.text, doc.metadata.model_dump()), claim)
                for span, doc, claim in zip(spans, documents, claims, strict=True)
                if isinstance(claim, Claim) and claim.changed
            ]
            announced = await self._publish_each(changed)
        finally:
            for span in spans:
                span.end()
        for outcome in (*claims, *announced):
            if isinstance(outcome, BaseException) and not isinstance(outcome, ConcurrentUpdate):
                raise outcome  # DependencyUnavailable (503 naming it), or a bug
        return [
            self._accepted(claim.status, span) if isinstance(claim, Claim) else cast(ConcurrentUpdate, claim)
            for span, claim in zip(spans, claims, strict=True)
        ]

    async def _claim(
        self, span: trace.Span, namespace: str, document_id: str | None, text: str, metadata: dict[str, Any]
    ) -> Claim:
        """The lifecycle's claim of the document for this request (`span`: the document's own span)."""
        document_id = document_id or uuid.uuid4().hex
        span.set_attributes({"document.id": document_id, "ragtrace.namespace": namespace})
        key = self.store.record_key(namespace, document_id)
        with (
            trace.use_span(span),
            tracer.start_as_current_span(
                "upload document", attributes={"ragtrace.bucket": self.store.bucket, "ragtrace.key": key}
            ),
        ):
            claim = await self._call(
                self.lifecycle.accept,
                namespace,
                document_id,
                text,
                metadata,
                content_hash(text),
                utcnow(),
                trace_id_hex(span),
                span_id_hex(span),
            )
        if not claim.changed:
            span.set_attribute("ragtrace.unchanged", True)
        else:
            log.info("accepted document %s in namespace %s (%d characters)", document_id, namespace, len(text))
        return claim

    async def delete(self, namespace: str, document_id: str) -> DocumentStatus:
        """Mark the document `deleting` and announce it; its chunks leave the index through the same flow."""
        claim = await self._call(self.lifecycle.begin_delete, namespace, document_id)
        if claim is None:
            raise DocumentNotFound(namespace, document_id)
        event = DocumentEvent(
            type=EventType.DELETE,
            document_id=document_id,
            namespace=namespace,
            ingest_id=claim.status.ingest_id or "",
            accepted_at=claim.status.updated_at,
        )
        await self._publish(event, claim)
        return claim.status

    async def _publish_each(
        self, changed: list[tuple[trace.Span, DocumentEvent, Claim]]
    ) -> list[DependencyUnavailable | None]:
        """`_publish` for many claims at once: the events produced together; each refused claim given back."""
        outcomes = await self.publisher.publish_each(
            self.kafka.documents_topic,
            [(message_key(event.namespace, event.document_id), event, span) for span, event, _ in changed],
        )
        refused = [(claim, error) for (_, _, claim), error in zip(changed, outcomes, strict=True) if error]
        await asyncio.gather(*(self._call(self.lifecycle.give_back, claim, str(error)) for claim, error in refused))
        return outcomes

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

    async def status_of(self, namespace: str, document_id: str) -> DocumentStatus:
        current = await self._call(self.lifecycle.status, namespace, document_id)
        if current is None:
            raise DocumentNotFound(namespace, document_id)
        return current

    async def statuses(self, namespace: str, document_ids: Sequence[str]) -> dict[str, DocumentStatus | None]:
        """Many documents' statuses, read concurrently (None: no such document)."""
        found = await asyncio.gather(*(self._call(self.lifecycle.status, namespace, d) for d in document_ids))
        return dict(zip(document_ids, found, strict=True))

    def _accepted(self, status: DocumentStatus, span: trace.Span) -> IngestAccepted:
        return IngestAccepted(
            document_id=status.document_id,
            namespace=status.namespace,
            status=status.status,
            bucket=self.store.bucket,
            key=self.store.record_key(status.namespace, status.document_id),
            content_hash=status.content_hash or "",
            trace_id=trace_id_hex(span),
        )

    async def check_kafka(self) -> None:
        await self.publisher.check()

    async def check_minio(self) -> None:
        await asyncio.to_thread(self.store.ensure_bucket)
