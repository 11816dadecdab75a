"""Raw documents, their status records and the content-hash registry, kept in MinIO.

Layout of the bucket (default `documents`):
    {namespace}/{document_id}/{ingest_id}.json  one accepted version of the document (StoredDocument), never
                                                 rewritten: the request that stored it is in its name
    _status/{namespace}/{document_id}.json      its status record (DocumentStatus): which version is current
    _hashes/{namespace}/{sha256}                the document that owns this content in the namespace
Namespaces cannot start with "_", so the bookkeeping prefixes never collide with documents.

Status records are only ever written conditionally (S3 preconditions: `If-Match` on the ETag that was read,
`If-None-Match: *` for a record that did not exist), so two writers can never both win: the loser gets
`Conflict` and reads again. The rules built on this are in ragtrace/lifecycle.py.

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
from ragtrace.schemas import DocumentStatus, StoredDocument

ModelT = TypeVar("ModelT", bound=BaseModel)
P = ParamSpec("P")
R = TypeVar("R")

# 412 from S3 and MinIO; 409 from S3 when two conditional writes of one key race.
_PRECONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict")


class Conflict(Exception):
    """A conditional write lost: the object changed (or appeared) since it was read."""


def _minio_call(method: Callable[P, R]) -> Callable[P, R]:
    """MinIO not answering (refused, timed out, cut off) becomes DependencyUnavailable("minio")."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except urllib3.exceptions.TimeoutError as error:
            raise DependencyUnavailable("minio", "no answer in time") from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise DependencyUnavailable("minio", f"connection failed ({type(error).__name__})") from error
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
    def version_key(namespace: str, document_id: str, ingest_id: str) -> str:
        return f"{namespace}/{document_id}/{ingest_id}.json"

    # raw document versions

    @_minio_call
    def put_version(self, document: StoredDocument) -> str:
        key = self.version_key(document.namespace, document.document_id, document.ingest_id)
        self._put(key, document, {"content-hash": document.content_hash})
        return key

    @_minio_call
    def get_version(self, key: str) -> StoredDocument | None:
        document, _ = self._get(key, StoredDocument)
        return document

    @_minio_call
    def remove(self, key: str) -> None:
        self.client.remove_object(self.bucket, key)

    # status records: read with their ETag, written only if that ETag is still current

    @_minio_call
    def read_status(self, namespace: str, document_id: str) -> tuple[DocumentStatus | None, str | None]:
        return self._get(self._status_key(namespace, document_id), DocumentStatus)

    def get_status(self, namespace: str, document_id: str) -> DocumentStatus | None:
        status, _ = self.read_status(namespace, document_id)
        return status

    @_minio_call
    def write_status(self, status: DocumentStatus, etag: str | None) -> None:
        """Write the record if it is still the one read with `etag` (None: if there is still none), else
        raise Conflict."""
        precondition: dict[str, str | list[str] | tuple[str]] = (
            {"If-Match": f'"{etag}"'} if etag else {"If-None-Match": "*"}
        )
        self._put(self._status_key(status.namespace, status.document_id), status, precondition=precondition)

    @staticmethod
    def _status_key(namespace: str, document_id: str) -> str:
        return f"_status/{namespace}/{document_id}.json"

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

    def _put(
        self,
        key: str,
        model: BaseModel,
        metadata: dict[str, str | list[str] | tuple[str]] | None = None,
        precondition: dict[str, str | list[str] | tuple[str]] | None = None,
    ) -> None:
        data = model.model_dump_json().encode()
        if precondition is None:
            self.client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type="application/json", metadata=metadata
            )
            return
        # put_object has no parameter for S3's preconditions (it would send them as user metadata); the
        # client's own single-request PutObject sends headers as given.
        headers: dict[str, str | list[str] | tuple[str]] = {"Content-Type": "application/json", **precondition}
        try:
            self.client._put_object(self.bucket, key, data, headers)
        except S3Error as error:
            if error.code in _PRECONDITION_FAILED:
                raise Conflict(key) from error
            raise

    def _get(self, key: str, model: type[ModelT]) -> tuple[ModelT | None, str | None]:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as error:
            if error.code == "NoSuchKey":
                return None, None
            raise
        try:
            return model.model_validate_json(response.read()), response.headers.get("etag", "").strip('"') or None
        finally:
            response.close()
            response.release_conn()
