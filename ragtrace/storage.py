"""Documents kept in MinIO: one object per document, holding its record (ragtrace.schemas.DocumentRecord):
its status and the raw text and metadata of the version that owns it.

Layout of the bucket (default `documents`):
    {namespace}/{document_id}.json   the document's record
    _reindex/{namespace}.json        the namespace's re-index job (ragtrace/reindex.py; `_` is no namespace's)

One object per document keeps a new document's whole life to three round trips: the ingest API writes the
record as a new one (and reads and writes again only when one was there); the indexer reads it (does the
event still own the document?) and writes the outcome. The event carries the text, so the embedding worker
never reads MinIO; duplicate content is found in the index, which knows each document's content hash.

Records are only ever written conditionally (S3 preconditions: `If-Match` on the ETag that was read,
`If-None-Match: *` for a record that did not exist), so two writers can never both win: the loser gets
`Conflict` and reads again. The rules built on this are in ragtrace/lifecycle.py.

The MinIO client is synchronous; async callers go through `asyncio.to_thread`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import ParamSpec, TypeVar

import urllib3
from minio import Minio
from minio.error import S3Error

from ragtrace.errors import DependencyUnavailable
from ragtrace.schemas import DocumentRecord

P = ParamSpec("P")
R = TypeVar("R")

# 412 from S3 and MinIO; 409 from S3 when two conditional writes of one key race.
_PRECONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict")
# A conditional write's URL is used at once; the expiry only bounds a URL that leaked into a log.
PRESIGNED_PUT_EXPIRY = timedelta(minutes=1)


class Conflict(Exception):
    """A conditional write lost: the object changed (or appeared) since it was read."""


def minio_call(method: Callable[P, R]) -> Callable[P, R]:
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


@minio_call
def ensure_bucket(client: Minio, bucket: str) -> None:
    if not client.bucket_exists(bucket):
        try:
            client.make_bucket(bucket)
        except S3Error as error:  # another replica created it first
            if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise


class DocumentStore:
    """`client` and `http`: ragtrace.clients.minio_client and the connection pool it was built on."""

    def __init__(self, client: Minio, http: urllib3.PoolManager, bucket: str = "documents") -> None:
        self.client = client
        self.http = http
        self.bucket = bucket

    def ensure_bucket(self) -> None:
        ensure_bucket(self.client, self.bucket)

    @staticmethod
    def record_key(namespace: str, document_id: str) -> str:
        return f"{namespace}/{document_id}.json"

    # records: read with their ETag, written only if that ETag is still current

    def read(self, namespace: str, document_id: str) -> tuple[DocumentRecord | None, str | None]:
        """The record and its ETag; (None, None) when the document has none."""
        data, etag = self.read_object(self.record_key(namespace, document_id))
        return (DocumentRecord.model_validate_json(data), etag) if data is not None else (None, None)

    def write(self, record: DocumentRecord, etag: str | None) -> None:
        """Write the record if it is still the one read with `etag` (None: if there is still none), else
        raise Conflict."""
        key = self.record_key(record.status.namespace, record.status.document_id)
        self.write_object(key, record.model_dump_json().encode(), etag)

    def document_ids(self, namespace: str) -> list[str]:
        """The ids of every document of the namespace that has a record, whatever its state."""
        return self.names(f"{namespace}/")

    @minio_call
    def names(self, prefix: str) -> list[str]:
        """The names of the JSON objects under the prefix (`{prefix}{name}.json`)."""
        keys = (o.object_name or "" for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True))
        return [key[len(prefix) : -len(".json")] for key in keys if key.endswith(".json")]

    # any object: read with its ETag, written only if that ETag is still current

    @minio_call
    def read_object(self, key: str) -> tuple[bytes | None, str | None]:
        """The object's bytes and ETag; (None, None) when there is none."""
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchBucket"):
                return None, None
            raise
        try:
            return response.read(), response.headers.get("etag", "").strip('"') or None
        finally:
            response.close()
            response.release_conn()

    @minio_call
    def write_object(self, key: str, data: bytes, etag: str | None) -> None:
        """Write the object if it is still the one read with `etag` (None: if there is still none), else
        raise Conflict."""
        # The pinned minio client's put_object sends any header it does not know as user metadata, so S3's
        # preconditions go as a plain PUT to a URL it presigns (headers outside the signature are allowed),
        # through the client's own connection pool and deadlines.
        url = self.client.presigned_put_object(self.bucket, key, expires=PRESIGNED_PUT_EXPIRY)
        precondition = {"If-Match": f'"{etag}"'} if etag else {"If-None-Match": "*"}
        response = self.http.request(
            "PUT", url, body=data, headers={"Content-Type": "application/json", **precondition}, preload_content=True
        )
        if response.status < 300:
            return
        error = S3Error.fromxml(response)
        if error.code in _PRECONDITION_FAILED:
            raise Conflict(key) from error
        raise error
