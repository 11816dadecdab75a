"""Wire contracts shared by the services: HTTP bodies, Kafka events and stored records, defined once."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

NAMESPACE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
DOCUMENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"

Namespace = Annotated[str, StringConstraints(pattern=NAMESPACE_PATTERN)]
DocumentId = Annotated[str, StringConstraints(pattern=DOCUMENT_ID_PATTERN)]


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


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    metadata: DocumentMetadata
    namespace: Namespace = "default"
    document_id: DocumentId | None = None

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text must contain something other than whitespace")
        return text


class DocumentState(StrEnum):
    ACCEPTED = "accepted"
    PROCESSING = "processing"
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
    """The status record of one document (stored next to it; returned by GET /ingest/{id})."""

    document_id: str
    namespace: str
    status: DocumentState
    chunks: int = 0
    error: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    content_hash: str | None = None
    ingest_id: str | None = None  # the request that produced the current version
    duplicate_of: str | None = None
    accepted_at: datetime | None = None
    indexed_at: datetime | None = None


class ErrorBody(BaseModel):
    error: str
    message: str
    dependency: str | None = None
    details: list[dict[str, Any]] | None = None


# Stored document and Kafka events ------------------------------------------------------------------------


class StoredDocument(BaseModel):
    """The raw document as kept in MinIO (bucket `documents`, key `{namespace}/{document_id}.json`)."""

    document_id: str
    namespace: str
    text: str
    metadata: dict[str, Any]
    content_hash: str
    ingested_at: datetime
    ingest_id: str  # the request that stored this version; events of other requests are stale


class DocumentRef(BaseModel):
    """What every pipeline event has: which request, about which document."""

    model_config = ConfigDict(extra="ignore")

    document_id: str
    namespace: str
    ingest_id: str


class EventType(StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"


class DocumentEvent(DocumentRef):
    """On the documents topic, keyed by `{namespace}/{document_id}` so one document's events stay ordered."""

    type: EventType
    content_hash: str | None = None
    bucket: str | None = None
    key: str | None = None
    accepted_at: datetime


class Chunk(BaseModel):
    chunk_id: str
    chunk_no: int
    text: str
    start: int  # character offsets of the chunk in the document text
    end: int
    vector: list[float]


class ChunkBatch(DocumentRef):
    """On the chunks topic: one document's chunks and vectors, or its deletion (no chunks)."""

    type: EventType
    content_hash: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    dimension: int | None = None
    chunks: list[Chunk] = Field(default_factory=list)
    accepted_at: datetime


def message_key(namespace: str, document_id: str) -> bytes:
    return f"{namespace}/{document_id}".encode()
