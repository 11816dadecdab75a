"""Wire contracts shared by the services: HTTP bodies, Kafka events and stored records, defined once."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

NAMESPACE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MAX_DOCUMENT_ID_CHARS = 128
DOCUMENT_ID_PATTERN = rf"^[A-Za-z0-9._:-]{{1,{MAX_DOCUMENT_ID_CHARS}}}$"


def encodable(text: str) -> str:
    """JSON can carry a lone UTF-16 surrogate ("\\ud800"), which no UTF-8 store, message or response can: such
    text is invalid input, refused naming its field, never a crash further on."""
    try:
        text.encode()
    except UnicodeEncodeError as error:
        raise ValueError(
            f"contains a lone surrogate (U+{ord(text[error.start]):04X} at position {error.start}), "
            "which is not valid Unicode text"
        ) from None
    return text


def encodable_json(value: Any, field: str) -> None:
    """Every string in a JSON value (keys too) passes `encodable`; the error names its path."""
    try:
        if isinstance(value, str):
            encodable(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                encodable(key)
                encodable_json(item, f"{field}.{key}")
        elif isinstance(value, list):
            for position, item in enumerate(value):
                encodable_json(item, f"{field}[{position}]")
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(field) else f"{field}: {message}") from None


def _not_a_dot_segment(document_id: str) -> str:
    # HTTP clients remove `.` and `..` path segments (RFC 3986), so such a document could never be read back.
    if document_id in (".", ".."):
        raise ValueError(f"'{document_id}' cannot be a document id: URLs cannot address it")
    return document_id


def document_id_for_path(path: str) -> str:
    """The document id of a file or object at `path` (relative, `/`-separated): the path with `/` as `:` when
    every other character is one an id may hold (`:` itself is not, here); otherwise those characters become
    `_` and a digest of the whole path follows, so that two paths never share an id. Every way in that names
    documents by their path uses this."""
    path = path.strip("/")
    readable = path.replace("/", ":")
    safe = re.sub(r"[^A-Za-z0-9._:-]", "_", readable)
    if ":" not in path and safe == readable and 0 < len(safe) <= MAX_DOCUMENT_ID_CHARS and safe not in (".", ".."):
        return safe
    digest = hashlib.sha256(path.encode()).hexdigest()[:12]
    return f"{safe[: MAX_DOCUMENT_ID_CHARS - len(digest) - 1]}-{digest}"


Text = Annotated[str, AfterValidator(encodable)]
Namespace = Annotated[str, StringConstraints(pattern=NAMESPACE_PATTERN)]
DocumentId = Annotated[str, StringConstraints(pattern=DOCUMENT_ID_PATTERN), AfterValidator(_not_a_dot_segment)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def content_hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def chunk_id(document_id: str, chunk_no: int) -> str:
    """Deterministic, so that re-indexing a document overwrites its chunks instead of adding copies."""
    return f"{document_id}:{chunk_no}"


# HTTP ----------------------------------------------------------------------------------------------------


class DocumentMetadata(BaseModel):
    """A document's own metadata: a title, plus any free keys the client adds."""

    model_config = ConfigDict(extra="allow")

    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1024)]

    @model_validator(mode="after")
    def _extras_are_text(self) -> DocumentMetadata:
        encodable_json(self.model_extra or {}, "metadata")
        return self


class DocumentInput(BaseModel):
    """One document as a client gives it: the one validation of every way in (POST /ingest, each item of
    POST /ingest/batch, an uploaded file, an object in the inbox bucket)."""

    model_config = ConfigDict(extra="forbid")

    # The schema says what the validator refuses: at least one character other than white space.
    text: Annotated[Text, Field(min_length=1, json_schema_extra={"pattern": r"\S"})]
    metadata: DocumentMetadata
    document_id: DocumentId | None = None

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text must contain something other than whitespace")
        return text


class IngestRequest(DocumentInput):
    """The body of POST /ingest: one document, and its namespace."""

    namespace: Namespace = "default"


class DocumentState(StrEnum):
    ACCEPTED = "accepted"  # stored and announced; the workers have not finished it yet
    INDEXED = "indexed"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    DELETING = "deleting"
    DELETED = "deleted"


class IngestAccepted(BaseModel):
    document_id: str
    namespace: str
    status: DocumentState
    bucket: str
    key: str
    content_hash: str
    trace_id: str


class DocumentStatus(BaseModel):
    """Where one document is (part of its record in MinIO; returned by GET /documents/{id})."""

    document_id: str
    namespace: str
    status: DocumentState
    chunks: int = 0
    error: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    content_hash: str | None = None
    ingest_id: str | None = None  # the request that owns the document (see ragtrace/lifecycle.py)
    # The trace and span (W3C hex) of the request that stored this version: a search's sources link to it.
    trace_id: str | None = None
    span_id: str | None = None
    key: str | None = None  # the object holding the document's record (DocumentRecord)
    duplicate_of: str | None = None
    accepted_at: datetime | None = None
    indexed_at: datetime | None = None


class ErrorBody(BaseModel):
    error: str
    message: str
    dependency: str | None = None
    details: list[dict[str, Any]] | None = None


MAX_BATCH_DOCUMENTS = 1000


class IngestBatchRequest(BaseModel):
    """The body of POST /ingest/batch (JSON). Each document is validated on its own (`DocumentInput`), so one
    bad document is answered in its own result and never fails the others."""

    model_config = ConfigDict(extra="forbid")

    namespace: Namespace = "default"
    documents: list[DocumentInput] = Field(min_length=1, max_length=MAX_BATCH_DOCUMENTS)


class ItemError(BaseModel):
    field: str  # e.g. `documents[3].text`
    message: str


class BatchItemResult(BaseModel):
    """One document of a batch, by its position in the input: accepted (with its own trace) or refused."""

    index: int
    document_id: str | None = None
    status: DocumentState | None = None
    content_hash: str | None = None
    trace_id: str | None = None
    error: ItemError | None = None


class IngestBatchAccepted(BaseModel):
    accepted: int
    rejected: int
    results: list[BatchItemResult]


class StatusQuery(BaseModel):
    """The body of POST /ingest/status: many documents' statuses in one request (progress of a bulk ingest,
    and what a rerun need not send again)."""

    model_config = ConfigDict(extra="forbid")

    namespace: Namespace = "default"
    document_ids: list[DocumentId] = Field(min_length=1, max_length=MAX_BATCH_DOCUMENTS)


class StatusAnswer(BaseModel):
    documents: dict[str, DocumentStatus | None]  # None: no such document


# Stored document and Kafka events ------------------------------------------------------------------------


class DocumentRecord(BaseModel):
    """A document's one object in MinIO (bucket `documents`, key `{namespace}/{document_id}.json`): its status,
    and the raw text and metadata of the version that owns it (ragtrace/lifecycle.py)."""

    status: DocumentStatus
    text: str | None = None  # None once the document is being deleted, or was never accepted
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentRef(BaseModel):
    """What every pipeline event has: which request, about which document."""

    model_config = ConfigDict(extra="ignore")

    document_id: str
    namespace: str
    ingest_id: str
    # A re-index event (ragtrace/reindex.py): the generation of the namespace's index it rebuilds the owner's
    # version into, leaving the record as it is. None: the owner's own event.
    generation: int | None = None

    def happened_before(self, other: DocumentRef) -> bool:
        """Whether the events themselves show that this one happened before `other`, about the same document.
        False here: one producer per key, so the order they arrive in is the order they happened in."""
        return False


class EventType(StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"


class DocumentEvent(DocumentRef):
    """On the documents topic, keyed by `{namespace}/{document_id}` so one document's events stay ordered.
    An upsert carries its version's text (bounded by the ingest API's body limit, below Kafka's message
    limit), so the embedding worker never reads it back from MinIO."""

    type: EventType
    content_hash: str | None = None
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    accepted_at: datetime

    @classmethod
    def upsert(
        cls, status: DocumentStatus, text: str | None, metadata: dict[str, Any], generation: int | None = None
    ) -> DocumentEvent:
        """The upsert that announces the version `status` describes, on behalf of its owner's request (a
        re-index's: into `generation`)."""
        return cls(
            type=EventType.UPSERT,
            document_id=status.document_id,
            namespace=status.namespace,
            ingest_id=status.ingest_id or "",
            generation=generation,
            content_hash=status.content_hash,
            text=text,
            metadata=metadata,
            accepted_at=status.accepted_at or status.updated_at,
        )


def _vector_from_wire(value: object) -> object:
    """A vector as the chunks topic carries it: base64 of little-endian float32s; or a list of numbers, as
    chunk batches were written before 2026-12-07 (still in a topic's retention during an upgrade)."""
    if not isinstance(value, str):
        return value
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as error:
        raise ValueError(f"not base64: {error}") from error
    if len(raw) % 4:
        raise ValueError(f"{len(raw)} bytes is not a whole number of float32s")
    return np.frombuffer(raw, dtype="<f4").tolist()


def _vector_to_wire(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


# On the wire as float32 bytes in base64: 2 KB for 384 dimensions where JSON's decimal floats take 8 KB, which
# the broker, the producer and the consumer each handle per byte. The vectors are float32 already: nothing lost.
WireVector = Annotated[
    list[float],
    BeforeValidator(_vector_from_wire),
    PlainSerializer(_vector_to_wire, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "description": "The vector's float32 values, little-endian, in base64 (a JSON array of numbers is "
            "also read)",
        }
    ),
]


class Chunk(BaseModel):
    chunk_id: str
    chunk_no: int
    text: str
    start: int  # character offsets of the chunk in the document text
    end: int
    vector: WireVector


class ChunkBatch(DocumentRef):
    """On the chunks topic: one document's chunks and vectors, or its deletion (no chunks)."""

    type: EventType
    content_hash: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    dimension: int | None = None
    chunks: list[Chunk] = Field(default_factory=list)
    accepted_at: datetime

    @classmethod
    def of(
        cls, event: DocumentEvent, chunks: list[Chunk], model: str | None = None, dimension: int | None = None
    ) -> ChunkBatch:
        """What the embedding worker makes of a document event: its chunks (none for a deletion)."""
        return cls(
            type=event.type,
            document_id=event.document_id,
            namespace=event.namespace,
            ingest_id=event.ingest_id,
            generation=event.generation,
            content_hash=event.content_hash,
            metadata=event.metadata,
            model=model,
            dimension=dimension,
            accepted_at=event.accepted_at,
            chunks=chunks,
        )


# Re-index (ragtrace/reindex.py) -------------------------------------------------------------------------


class ReindexState(StrEnum):
    RUNNING = "running"  # documents are being rebuilt into the new generation; the old one serves
    FAILED = "failed"  # every document is through, some failed: the old generation serves; POST again retries
    DONE = "done"  # the namespace switched to the new generation and the old one is dropped


class ReindexJob(BaseModel):
    """A namespace's re-index (MinIO object `_reindex/{namespace}.json`): what it rebuilds, and how far it is.
    The documents done are read from the index itself, so that this survives any process's crash."""

    namespace: str
    generation: int  # the generation being built
    state: ReindexState = ReindexState.RUNNING
    documents: list[str]  # the documents it rebuilds: each one's owner's version when its event is published
    failed: dict[str, str] = Field(default_factory=dict)  # document id → error (dead-lettered)
    gone: list[str] = Field(default_factory=list)  # deleted or superseded by a failed version meanwhile
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class ReindexProgress(BaseModel):
    """GET /namespaces/{namespace}/reindex."""

    namespace: str
    generation: int
    state: ReindexState
    total: int
    done: int
    failed: dict[str, str]
    gone: int
    started_at: datetime
    finished_at: datetime | None


def message_key(namespace: str, document_id: str) -> bytes:
    return f"{namespace}/{document_id}".encode()
