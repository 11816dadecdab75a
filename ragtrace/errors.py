"""Errors that cross service boundaries with a meaning: each maps to one HTTP and one gRPC status."""

from __future__ import annotations


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
