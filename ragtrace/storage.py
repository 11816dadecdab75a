"""Raw documents, their status records and the content-hash registry, kept in MinIO.

Layout of the bucket (default `documents`):
    {namespace}/{document_id}.json          the raw document (StoredDocument)
    _status/{namespace}/{document_id}.json  its status record (DocumentStatus)
    _hashes/{namespace}/{sha256}            the document that owns this content in the namespace
Namespaces cannot start with "_", so the bookkeeping prefixes never collide with documents.

The MinIO client is synchronous; async callers go through `asyncio.to_thread`.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import urllib3
from minio import Minio
from minio.error import S3Error
from pydantic import BaseModel

from ragtrace.errors import DependencyUnavailable
from ragtrace.schemas import DocumentStatus, StoredDocument, utcnow

ModelT = TypeVar("ModelT", bound=BaseModel)
P = ParamSpec("P")
R = TypeVar("R")


def _minio_call(method: Callable[P, R]) -> Callable[P, R]:
    """MinIO not answering (refused, timed out, cut off) becomes DependencyUnavailable("minio")."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise DependencyUnavailable("minio", repr(error)) from error
        except S3Error as error:
            if error.code in ("ServerNotInitialized", "SlowDown", "XMinioServerNotInitialized"):
                raise DependencyUnavailable("minio", error.code) from error
            raise

    return wrapper


class DocumentStore:
    def __init__(self, client: Minio, bucket: str = "documents") -> None:
        self.client = client
        self.bucket = bucket

    @_minio_call
    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as error:  # another replica created it first
                if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    @staticmethod
    def document_key(namespace: str, document_id: str) -> str:
        return f"{namespace}/{document_id}.json"

    # raw documents

    @_minio_call
    def put_document(self, document: StoredDocument) -> str:
        key = self.document_key(document.namespace, document.document_id)
        self._put(key, document, {"content-hash": document.content_hash})
        return key

    @_minio_call
    def get_document(self, namespace: str, document_id: str) -> StoredDocument | None:
        return self._get(self.document_key(namespace, document_id), StoredDocument)

    @_minio_call
    def delete_document(self, namespace: str, document_id: str) -> None:
        self.client.remove_object(self.bucket, self.document_key(namespace, document_id))

    # status records

    @_minio_call
    def put_status(self, status: DocumentStatus) -> None:
        self._put(f"_status/{status.namespace}/{status.document_id}.json", status)

    @_minio_call
    def get_status(self, namespace: str, document_id: str) -> DocumentStatus | None:
        return self._get(f"_status/{namespace}/{document_id}.json", DocumentStatus)

    @_minio_call
    def update_status(self, namespace: str, document_id: str, ingest_id: str, **changes: object) -> bool:
        """Change the status record if it still belongs to request `ingest_id` (a newer request owns it
        otherwise); `updated_at` is set to now. True if it was changed."""
        current = self.get_status(namespace, document_id)
        if current is None or current.ingest_id != ingest_id:
            return False
        self.put_status(current.model_copy(update={**changes, "updated_at": utcnow()}))
        return True

    # content-hash registry: which document owns a given content in a namespace

    @_minio_call
    def hash_owner(self, namespace: str, digest: str) -> str | None:
        try:
            response = self.client.get_object(self.bucket, self._hash_key(namespace, digest))
        except S3Error as error:
            if error.code == "NoSuchKey":
                return None
            raise
        try:
            return response.read().decode()
        finally:
            response.close()
            response.release_conn()

    @_minio_call
    def claim_hash(self, namespace: str, digest: str, document_id: str) -> None:
        data = document_id.encode()
        self.client.put_object(self.bucket, self._hash_key(namespace, digest), io.BytesIO(data), len(data))

    @_minio_call
    def release_hash(self, namespace: str, digest: str, document_id: str) -> None:
        """Drop the registry entry, if this document is the one that owns it."""
        if self.hash_owner(namespace, digest) == document_id:
            self.client.remove_object(self.bucket, self._hash_key(namespace, digest))

    @staticmethod
    def _hash_key(namespace: str, digest: str) -> str:
        return f"_hashes/{namespace}/{digest.removeprefix('sha256:')}"

    # plumbing

    def _put(self, key: str, model: BaseModel, metadata: dict[str, str | list[str] | tuple[str]] | None = None) -> None:
        data = model.model_dump_json().encode()
        self.client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type="application/json", metadata=metadata
        )

    def _get(self, key: str, model: type[ModelT]) -> ModelT | None:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as error:
            if error.code == "NoSuchKey":
                return None
            raise
        try:
            return model.model_validate_json(response.read())
        finally:
            response.close()
            response.release_conn()
