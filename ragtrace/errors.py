"""Errors that cross service boundaries with a meaning: each maps to one HTTP and one gRPC status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class DependencyUnavailable(RuntimeError):
    """A server we depend on did not answer in time: HTTP 503 / gRPC UNAVAILABLE, naming it."""

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(f"{dependency} is unavailable: {detail}")
        self.dependency = dependency
        self.detail = detail


class PoisonMessage(ValueError):
    """A message no retry can fix (undecodable, invalid): it goes straight to the dead-letter topic."""


class ConcurrentUpdate(RuntimeError):
    """Too many requests changed one record at once to get a write in: HTTP 409, worth retrying."""


class DocumentNotFound(LookupError):
    """No such document in the namespace: HTTP 404."""

    def __init__(self, namespace: str, document_id: str) -> None:
        super().__init__(f"no document '{document_id}' in namespace '{namespace}'")
        self.namespace = namespace
        self.document_id = document_id


class NamespaceNotFound(LookupError):
    """No document was ever stored in the namespace, or nothing of the kind asked for: HTTP 404."""


class AlreadyRunning(RuntimeError):
    """The work asked for is under way already (a namespace's re-index): HTTP 409, naming it."""


class InvalidInput(ValueError):
    """A request that cannot be served as given: HTTP 422 / gRPC INVALID_ARGUMENT, naming each field."""


class ModelMismatch(ValueError):
    """Vectors of one embedding model meet a namespace indexed with another: gRPC FAILED_PRECONDITION, HTTP
    409. Comparing them would rank by noise, so the search (or the index write) is refused, naming both."""

    def __init__(self, namespace: str, indexed: str, given: str) -> None:
        super().__init__(
            f"namespace '{namespace}' is indexed with embedding model {indexed}, "
            f"but the vectors given come from {given}: re-index the namespace or query it with {indexed}"
        )
        self.namespace = namespace
        self.indexed = indexed
        self.given = given


def error_location(location: Sequence[Any]) -> str:
    """A validation error's field path, `filters.key` style (the request body itself is not named)."""
    return ".".join(str(part) for part in location if part != "body") or "body"


def field_errors(errors: Iterable[Mapping[str, Any]]) -> str:
    """`field: problem; field: problem`: the one wording of Pydantic validation errors, over HTTP and gRPC."""
    return "; ".join(f"{error_location(e['loc'])}: {e['msg']}" for e in errors)
