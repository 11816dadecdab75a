"""Request bodies the ingest API reads itself, because one bad part must not fail the rest (a batch) or
because the framework's reading would lose what was sent (an upload's form fields): each document still
validated by the one `DocumentInput`, each problem answered naming its field.

- POST /ingest/batch: JSON (`IngestBatchRequest`) or NDJSON (one `DocumentInput` per line, the namespace as a
  query parameter); at most MAX_BATCH_DOCUMENTS documents (413 naming the limit past it).
- POST /ingest/file: multipart form data, parsed by python-multipart with every text field decoded as strict
  UTF-8 (Starlette's form parser falls back to Latin-1, which would store mojibake)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import python_multipart
from fastapi import HTTPException, status
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import File

from ingest.extract import UnreadableFile, UnsupportedFileType, extract_text
from ragtrace.errors import error_location
from ragtrace.schemas import (
    DOCUMENT_ID_PATTERN,
    MAX_BATCH_DOCUMENTS,
    NAMESPACE_PATTERN,
    DocumentInput,
    DocumentMetadata,
    IngestBatchRequest,
    IngestRequest,
    ItemError,
)

NDJSON = "application/x-ndjson"


# The OpenAPI request bodies of the two routes that read their body themselves; ingest/app.py adds the
# schemas they refer to.
BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/IngestBatchRequest"}},
            NDJSON: {
                "schema": {
                    "type": "string",
                    "description": "one DocumentInput JSON object per line; the namespace as the query parameter",
                }
            },
        },
    }
}
FILE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": ".txt, .md, .html or .pdf"},
                        "namespace": {"type": "string", "pattern": NAMESPACE_PATTERN, "default": "default"},
                        "document_id": {"type": "string", "pattern": DOCUMENT_ID_PATTERN},
                        "title": {"type": "string", "description": "default: the file's own title, or its name"},
                        "metadata": {"type": "string", "description": "JSON object of extra metadata"},
                    },
                }
            }
        },
    }
}


def openapi_schemas() -> dict[str, Any]:
    """The component schemas BATCH_BODY refers to: the batch and the models inside it."""
    schema = IngestBatchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions: dict[str, Any] = schema.pop("$defs", {})
    return {**definitions, "IngestBatchRequest": schema}


@dataclass
class BatchItems:
    """A batch's documents by position: the valid ones, and an error for each refused one."""

    namespace: str
    size: int
    documents: dict[int, DocumentInput] = field(default_factory=dict)
    errors: dict[int, ItemError] = field(default_factory=dict)

    def valid(self) -> list[tuple[int, DocumentInput]]:
        return sorted(self.documents.items())

    def add(self, index: int, item: Any) -> None:
        try:
            document = DocumentInput.model_validate(item)
        except ValidationError as error:
            self.errors[index] = _item_error(index, error)
            return
        if document.document_id is not None:
            for earlier, other in self.documents.items():
                if other.document_id == document.document_id:
                    self.errors[index] = ItemError(
                        field=f"documents[{index}].document_id",
                        message=f"'{document.document_id}' is also documents[{earlier}]: send one version per batch",
                    )
                    return
        self.documents[index] = document


def parse_batch(content_type: str, body: bytes, namespace_query: str | None) -> BatchItems:
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == NDJSON:
        return _ndjson_batch(body, namespace_query)
    if media_type != "application/json":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"send application/json or {NDJSON}, not '{media_type}'"
        )
    if namespace_query is not None:
        raise _invalid("namespace: a JSON batch names its namespace in the body, not as a query parameter")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise _invalid(f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise _invalid("the body must be a JSON object with 'documents' (and 'namespace')")
    unknown = set(data) - {"namespace", "documents"}
    if unknown:
        raise _invalid(f"{', '.join(sorted(unknown))}: not a field of a batch ('namespace', 'documents')")
    documents = data.get("documents")
    if not isinstance(documents, list):
        raise _invalid("documents: a list of documents is required")
    return _batch(_namespace(data.get("namespace", "default")), documents)


def _ndjson_batch(body: bytes, namespace_query: str | None) -> BatchItems:
    try:
        lines = [line for line in body.decode().splitlines() if line.strip()]
    except UnicodeDecodeError as error:
        raise _invalid(f"the body is not UTF-8: {error}") from None
    batch = _batch(_namespace(namespace_query or "default"), [None] * len(lines))
    for index, line in enumerate(lines):
        try:
            batch.add(index, json.loads(line))
        except (json.JSONDecodeError, RecursionError) as error:
            batch.errors[index] = ItemError(field=f"documents[{index}]", message=f"not a JSON object: {error}")
    return batch


def _batch(namespace: str, documents: list[Any]) -> BatchItems:
    if not documents:
        raise _invalid("documents: send at least one document")
    if len(documents) > MAX_BATCH_DOCUMENTS:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the batch holds {len(documents)} documents, more than the limit of {MAX_BATCH_DOCUMENTS} per request",
        )
    batch = BatchItems(namespace, len(documents))
    for index, item in enumerate(documents):
        if item is not None:
            batch.add(index, item)
    return batch


def _namespace(value: Any) -> str:
    try:
        return IngestRequest.model_validate({"namespace": value, "text": "-", "metadata": {"title": "-"}}).namespace
    except ValidationError as error:
        raise _invalid(f"namespace: {error.errors()[0]['msg']}") from None


def _item_error(index: int, error: ValidationError) -> ItemError:
    """The first problem's field, `documents[3].text`, and every problem in the message."""
    places = [f"documents[{index}]" + "".join(f".{part}" for part in p["loc"]) for p in error.errors()]
    message = "; ".join(f"{place}: {p['msg']}" for place, p in zip(places, error.errors(), strict=True))
    return ItemError(field=places[0], message=message)


def _problems(error: ValidationError) -> str:
    return "; ".join(f"{error_location(p['loc'])}: {p['msg']}" for p in error.errors())


def _invalid(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


# Uploads ----------------------------------------------------------------------------------------------------

TEXT_FIELDS = ("namespace", "document_id", "title", "metadata")


@dataclass(frozen=True)
class Upload:
    namespace: str
    document_id: str | None
    text: str
    metadata: DocumentMetadata


def parse_upload(content_type: str, body: bytes) -> Upload:
    fields, files = _form(content_type, body)
    if "file" not in files:
        raise _invalid("file: a file is required (a form field named 'file' with a filename)")
    filename, data = files["file"]
    try:
        text, suggested_title = extract_text(filename, data)
    except UnsupportedFileType as error:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, str(error)) from error
    except UnreadableFile as error:
        raise _invalid(str(error)) from error
    try:
        extra = json.loads(fields["metadata"]) if fields.get("metadata") else {}
    except json.JSONDecodeError as error:
        raise _invalid(f"metadata: not JSON: {error}") from None
    if not isinstance(extra, dict):
        raise _invalid("metadata: must be a JSON object")
    try:
        request = IngestRequest.model_validate(
            {
                "text": text,
                "namespace": fields.get("namespace") or "default",
                "document_id": fields.get("document_id") or None,
                "metadata": {**extra, "title": fields.get("title") or suggested_title},
            }
        )
    except ValidationError as error:
        raise _invalid(f"invalid upload: {_problems(error)}") from None
    return Upload(request.namespace, request.document_id, request.text, request.metadata)


def _form(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """The form's text fields (strict UTF-8) and files (name → (filename, bytes))."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send multipart/form-data with a 'file' field")
    raw_fields: dict[bytes, bytes] = {}
    files: dict[str, tuple[str, bytes]] = {}

    def on_file(upload: File) -> None:
        upload.file_object.seek(0)
        name = (upload.field_name or b"").decode(errors="replace")
        files[name] = ((upload.file_name or b"upload").decode(errors="replace"), upload.file_object.read())
        upload.close()

    try:
        python_multipart.parse_form(
            {"Content-Type": content_type.encode()},
            io.BytesIO(body),
            lambda form_field: raw_fields.__setitem__(form_field.field_name or b"", form_field.value or b""),
            on_file,
        )
    except (FormParserError, ValueError) as error:
        raise _invalid(f"the form data could not be parsed: {error}") from None
    fields: dict[str, str] = {}
    for raw_name, raw_value in raw_fields.items():
        name = raw_name.decode(errors="replace")
        if name == "file":
            raise _invalid("file: send it as a file part (with a filename), not as a text field")
        if name not in TEXT_FIELDS:
            raise _invalid(f"{name}: not a field of an upload ({', '.join(('file', *TEXT_FIELDS))})")
        try:
            fields[name] = raw_value.decode()
        except UnicodeDecodeError as error:
            raise _invalid(f"{name}: not valid UTF-8 text ({error.reason} at byte {error.start})") from None
    return fields, files
