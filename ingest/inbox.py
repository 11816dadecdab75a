"""Bucket events in and out: the inbox worker turns MinIO's notifications of the watched bucket into documents.

An object written under `<namespace>/<path>` of the watched bucket (RAGTRACE_INBOX_BUCKET) is document
`<path>` of `<namespace>`, named as `ragtrace ingest` names a file (`ragtrace.schemas.document_id_for_path`:
`ns1/docs/a.txt` is `docs:a.txt` of `ns1`; a path with characters an id cannot hold gets a digest, so two
objects never share a document). An overwrite is a new version; a delete removes the document (`deleted`).

MinIO publishes each event through its Kafka notification targets onto the inbox topic, keyed by
`bucket/object`, so one object's events share a partition and keep their order (docs/ingestion.md sets it up).
There are two targets, so each event arrives twice: at once, and again from MinIO's durable queue up to 3 s
later (ingest/settings.py); the worker remembers the last event it applied to each object and skips the copy.
Whatever the event says, this worker reads what the bucket holds for the object NOW: present, its text is
extracted (ingest/extract.py) and accepted as POST /ingest/file would accept it; gone, the document is
deleted. A replayed, duplicated or late notification therefore changes nothing the bucket does not say: a
settled version with the same content is left as it is (content hash), a deleted document stays deleted, and
of one object's events in a batch only the last is acted on (ragtrace/messaging.py). An object that can never
become a document (unsupported type, unreadable, too large, a name no document id can carry) goes to the
dead-letter topic with the reason; a version indexed before stays searchable.

No trace context comes from MinIO: each notification's processing span is the root of its document's trace,
and the document event accepted under it carries that trace through the embedding and indexer workers.

Run: `python -m ingest.inbox`. Before it reports ready it creates the bucket if missing and subscribes it to
the notification target (added to the bucket's notification configuration, once).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from faststream import Context, FastStream
from faststream.kafka import KafkaBroker
from minio import Minio
from minio.error import S3Error
from minio.notificationconfig import NotificationConfig, QueueConfig
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ingest.extract import UnreadableFile, UnsupportedFileType, extract_text
from ingest.ingestion import Ingestion
from ingest.settings import InboxSettings, IngestSettings
from ragtrace.errors import DependencyUnavailable, DocumentNotFound, PoisonMessage, field_errors
from ragtrace.messaging import Batch, CurrentBatch, Publisher, batch_subscriber, new_broker
from ragtrace.metrics import DOCUMENTS_PROCESSED
from ragtrace.runtime import document_store, run_worker, worker_app
from ragtrace.schemas import (
    DocumentEvent,
    DocumentId,
    DocumentMetadata,
    DocumentRef,
    IngestRequest,
    Namespace,
    document_id_for_path,
)
from ragtrace.settings import KafkaSettings
from ragtrace.storage import ensure_bucket, minio_call
from ragtrace.telemetry import skip_message

GROUP = "inbox"  # the consumer group, after the deployment's group prefix
EVENTS = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
REMEMBERED_OBJECTS = 65_536  # objects whose last applied event a worker remembers (a few MiB)


def document_of(object_name: str) -> tuple[str, str]:
    """(namespace, document id) that an object of the watched bucket names: `<namespace>/<path>` is the
    document its path names (`document_id_for_path`, the rule `ragtrace ingest` follows too)."""
    namespace, _, path = object_name.partition("/")
    return namespace, document_id_for_path(path)


class ObjectNotification(DocumentRef):
    """One bucket event as MinIO's Kafka target publishes it: the event's name, `bucket/object` (the object's
    own name, not URL-encoded) and, from its S3 record, the event's sequencer (what else the record says is
    not read, since the bucket is). The document is derived from the object's name (`document_of`). A
    notification is no request yet: the acceptance or deletion it leads to is one, so it has no `ingest_id`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    event_name: str = Field(alias="EventName", description="s3:ObjectCreated:Put, s3:ObjectRemoved:Delete, ...")
    key: str = Field(alias="Key", description="bucket/object")
    namespace: str = Field("", description="Derived from the object's name: its first folder")
    document_id: str = Field("", description="Derived from the object's name: the rest (document_id_for_path)")
    ingest_id: str = ""
    sequencer: str = Field("", description="From Records[0].s3.object: the event's, the same in each copy of it")

    @model_validator(mode="before")
    @classmethod
    def _derive_document(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("Key"), str):
            namespace, document_id = document_of(data["Key"].partition("/")[2])
            records = data.get("Records") or [{}]
            sequencer = records[0].get("s3", {}).get("object", {}).get("sequencer", "")
            return {"namespace": namespace, "document_id": document_id, "sequencer": sequencer, **data}
        return data

    def happened_before(self, other: DocumentRef) -> bool:
        """MinIO's two targets deliver an event's copies each in its own time, so a late copy of an older event
        may arrive after a newer one: the sequencers (the events' times) give their order. Within a batch this
        decides only which event is acted on, and whichever is reads the bucket as it is now; what matters is
        that it is not the copy of an event applied already, which would be skipped."""
        return isinstance(other, ObjectNotification) and happened_earlier(self.sequencer, other.sequencer)

    @property
    def bucket(self) -> str:
        return self.key.partition("/")[0]

    @property
    def object_name(self) -> str:
        return self.key.partition("/")[2]


def happened_earlier(sequencer: str, other: str) -> bool:
    """Did the event of `sequencer` happen before the event of `other`? MinIO's sequencer is the event's time in
    hexadecimal nanoseconds (for a write, the object's modification time), comparable between the events of one
    object; False where either is not one."""
    try:
        return int(sequencer, 16) < int(other, 16)
    except ValueError:
        return False


class _DocumentName(BaseModel):
    """What POST /ingest accepts as a document's namespace and id, checked before the object is read."""

    namespace: Namespace
    document_id: DocumentId


def validated_document(object_name: str) -> tuple[str, str]:
    """The document the object names, or PoisonMessage saying why it names none."""
    if "/" not in object_name:
        raise PoisonMessage(f"object '{object_name}' is in no namespace folder: write it as <namespace>/<path>")
    namespace, document_id = document_of(object_name)
    try:
        _DocumentName(namespace=namespace, document_id=document_id)
    except ValidationError as error:
        raise PoisonMessage(f"object '{object_name}' names no valid document: {field_errors(error.errors())}") from None
    return namespace, document_id


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str
    version_id: str | None


class WatchedBucket:
    """The watched bucket through the (synchronous) MinIO client: async callers use `asyncio.to_thread`."""

    def __init__(self, client: Minio, bucket: str, max_bytes: int) -> None:
        self.client = client
        self.bucket = bucket
        self.max_bytes = max_bytes

    @minio_call
    def read(self, object_name: str) -> StoredObject | None:
        """The object as the bucket holds it now; None when it is gone."""
        try:
            response = self.client.get_object(self.bucket, object_name)
        except S3Error as error:
            if error.code == "NoSuchKey":
                return None
            raise
        try:
            size = int(response.headers.get("content-length") or 0)
            if size > self.max_bytes:
                raise PoisonMessage(
                    f"object '{object_name}' is {size} bytes, over the {self.max_bytes}-byte limit of an upload"
                )
            return StoredObject(
                response.read(), response.headers.get("etag", "").strip('"'), response.headers.get("x-amz-version-id")
            )
        finally:
            response.close()
            response.release_conn()

    @minio_call
    def subscribe(self, arns: Sequence[str]) -> None:
        """Create the bucket if missing and have its object events published to each notification target of
        `arns`, keeping whatever else its notification configuration holds; nothing to do when they are there."""
        ensure_bucket(self.client, self.bucket)
        config = self.client.get_bucket_notification(self.bucket)
        if set(arns) <= {q.queue for q in config.queue_config_list if set(q.events) == set(EVENTS)}:
            return
        queues = [q for q in config.queue_config_list if q.queue not in arns]
        queues += [QueueConfig(queue=arn, events=EVENTS, config_id=f"ragtrace-inbox-{n}") for n, arn in enumerate(arns)]
        try:
            self.client.set_bucket_notification(
                self.bucket,
                NotificationConfig(
                    cloud_func_config_list=config.cloud_func_config_list,
                    queue_config_list=queues,
                    topic_config_list=config.topic_config_list,
                ),
            )
        except S3Error as error:
            if error.code == "InvalidArgument":
                raise RuntimeError(
                    f"MinIO lacks a notification target of RAGTRACE_INBOX_NOTIFICATION_ARNS {list(arns)} "
                    f"({error.message}): start it with MINIO_NOTIFY_KAFKA_* for each (docs/ingestion.md)"
                ) from error
            raise


class Inbox:
    """The worker's use case: each notification settles its document by what the bucket holds now."""

    def __init__(self, bucket: WatchedBucket, ingestion: Ingestion) -> None:
        self.bucket = bucket
        self.ingestion = ingestion
        # bucket/object → the sequencer of the last event applied to it (the most recently applied objects):
        # the copy of an event from MinIO's other target is skipped, rather than read and accepted again while
        # the first is still on its way through the pipeline. Only a copy: an older event's copy that arrives
        # after a newer event is settled by the bucket, since a write's sequencer is the time it began, and a
        # write that began before a delete may end after it. Elsewhere (another worker, after a restart) the
        # copy is settled by the bucket like any notification, and changes nothing.
        self._applied: OrderedDict[str, str] = OrderedDict()

    async def handle(self, notifications: Sequence[ObjectNotification], delivered: Batch) -> None:
        outcomes = await asyncio.gather(
            *(self._apply(n, delivered.span(i)) for i, n in enumerate(notifications)), return_exceptions=True
        )
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, DependencyUnavailable):
                raise outcome  # the batch waits for it and is tried again (its effects are idempotent)
            if isinstance(outcome, Exception):
                delivered.fail(index, outcome)

    async def _apply(self, notification: ObjectNotification, span: trace.Span) -> None:
        span.set_attributes(
            {
                "ragtrace.bucket": notification.bucket,
                "ragtrace.key": notification.object_name,
                "ragtrace.bucket.event": notification.event_name,
            }
        )
        if notification.bucket != self.bucket.bucket:
            skip_message(span, f"an event of bucket '{notification.bucket}', not of the watched one")
            return
        if notification.object_name.endswith("/"):
            skip_message(span, "a folder marker, not a file")
            return
        if notification.sequencer and self._applied.get(notification.key) == notification.sequencer:
            skip_message(span, "applied already: a copy of the event from MinIO's other notification target")
            return
        # Only the span of a notification acted on names its document: Tempo finds the document's trace by it.
        span.set_attributes({"document.id": notification.document_id, "ragtrace.namespace": notification.namespace})
        try:
            await self._settle(notification, span)
        except PoisonMessage:
            self._remember(notification)  # its copy would be refused the same way
            raise
        self._remember(notification)

    def _remember(self, notification: ObjectNotification) -> None:
        self._applied[notification.key] = notification.sequencer
        self._applied.move_to_end(notification.key)
        if len(self._applied) > REMEMBERED_OBJECTS:
            self._applied.popitem(last=False)

    async def _settle(self, notification: ObjectNotification, span: trace.Span) -> None:
        """The document as the bucket says now: the object's text accepted, or the document deleted."""
        namespace, document_id = validated_document(notification.object_name)
        with trace.use_span(span, end_on_exit=False):
            stored = await asyncio.to_thread(self.bucket.read, notification.object_name)
            if stored is None:
                span.set_attribute("ragtrace.event.type", "delete")
                await self._delete(namespace, document_id, span)
            else:
                span.set_attribute("ragtrace.event.type", "upsert")
                await self._accept(namespace, document_id, notification.object_name, stored)

    async def _accept(self, namespace: str, document_id: str, object_name: str, stored: StoredObject) -> None:
        try:
            text, title = extract_text(object_name, stored.data)
        except (UnsupportedFileType, UnreadableFile) as error:
            named = object_name in str(error)  # the extractor's message names the file, or not
            raise PoisonMessage(str(error) if named else f"object '{object_name}': {error}") from error
        source = {"source": f"s3://{self.bucket.bucket}/{object_name}", "etag": stored.etag}
        if stored.version_id:
            source["version_id"] = stored.version_id
        try:
            request = IngestRequest(
                text=text,
                namespace=namespace,
                document_id=document_id,
                metadata=DocumentMetadata(title=title, **source),
            )
        except ValidationError as error:
            raise PoisonMessage(f"object '{object_name}': {field_errors(error.errors())}") from None
        await self.ingestion.accept(namespace, document_id, request.text, request.metadata.model_dump())
        DOCUMENTS_PROCESSED.labels("inbox", "upsert").inc()

    async def _delete(self, namespace: str, document_id: str, span: trace.Span) -> None:
        try:
            await self.ingestion.delete(namespace, document_id)
        except DocumentNotFound:
            skip_message(span, "the object is gone and so is the document")
            return
        DOCUMENTS_PROCESSED.labels("inbox", "delete").inc()


def declare(broker: KafkaBroker, settings: InboxSettings, kafka: KafkaSettings) -> Publisher:
    """The worker's topics on `broker`: a batch subscriber on the inbox topic and publishers of document
    events and dead letters (also what the AsyncAPI document describes)."""
    # A publish may wait for a broker that restarts; an event published after all owns nothing once its
    # acceptance gave ownership back (ragtrace/lifecycle.py), and the notification is tried again.
    publisher = Publisher(broker, kafka, timeout_s=30.0, creates_topics=False)
    publisher.declare(
        kafka.documents_topic,
        DocumentEvent,
        "A document accepted (upsert) or deleted for an object of the watched bucket, keyed by namespace/document_id",
        title=f"{kafka.documents_topic}:InboxPublisher",
    )
    publisher.declare(
        kafka.dead_letter_topic(kafka.inbox_topic),
        ObjectNotification,
        "Bucket notifications whose object cannot become a document, or that failed every attempt, with "
        "ragtrace.error.* headers",
    )

    @batch_subscriber(
        broker,
        kafka,
        kafka.inbox_topic,
        kafka.group_prefix + GROUP,
        settings.max_batch,
        "MinIO's notifications of the watched bucket (its Kafka target), keyed by bucket/object",
    )
    async def ingest_objects(
        notifications: list[ObjectNotification], delivered: CurrentBatch, work: Annotated[Inbox, Context("inbox")]
    ) -> None:
        await work.handle(notifications, delivered)

    return publisher


def create_app(settings: InboxSettings, kafka: KafkaSettings) -> FastStream:
    broker = new_broker(kafka)
    publisher = declare(broker, settings, kafka)
    store = document_store()
    bucket = WatchedBucket(store.client, settings.bucket, IngestSettings().max_body_bytes)
    # Before the worker reports ready: an object written once it is ready has its notification.
    bucket.subscribe(settings.notification_arns)
    return worker_app(
        broker,
        kafka,
        group=GROUP,
        model=ObjectNotification,
        dead_letters=publisher,
        store=store,
        use_case=("inbox", Inbox(bucket, Ingestion(store, publisher, kafka))),
    )


def main() -> None:
    settings = InboxSettings()
    run_worker("inbox-worker", lambda: create_app(settings, KafkaSettings()), settings.metrics_port)


if __name__ == "__main__":
    main()
