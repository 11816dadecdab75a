"""A small trace store for the local stack: an OTLP/HTTP receiver that keeps spans in SQLite and answers
trace queries in Tempo's shape, so `ragtrace trace` reads it and a real Tempo the same way.

    POST /v1/traces          OTLP/HTTP, protobuf or JSON (what every ragtrace process exports)
    GET  /api/traces/{id}    {"batches": [ResourceSpans as OTLP JSON]} like Tempo; 404 when unknown

Run: `python -m ragtrace_tools.tracestore` (127.0.0.1:4318 by default). In Kubernetes, Tempo takes its place.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from ragtrace.http import create_service_app


class TraceStoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_TRACESTORE_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 4318
    path: Path = Path(".state/traces.sqlite")
    max_body_bytes: int = 16 * 1024 * 1024


_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    scope TEXT NOT NULL,
    span TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
"""


class SpanDatabase:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.executescript(_SCHEMA)
        self.lock = threading.Lock()

    def add(self, request: ExportTraceServiceRequest) -> int:
        rows = []
        for resource_spans in request.resource_spans:
            resource = json_format.MessageToJson(resource_spans.resource, indent=None)
            for scope_spans in resource_spans.scope_spans:
                scope = json_format.MessageToJson(scope_spans.scope, indent=None)
                for span in scope_spans.spans:
                    rows.append(
                        (
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            resource,
                            scope,
                            json_format.MessageToJson(span, indent=None),
                        )
                    )
        with self.lock:
            self.db.executemany("INSERT OR REPLACE INTO spans VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        with self.lock:
            rows = self.db.execute(
                "SELECT resource, scope, span FROM spans WHERE trace_id = ?", (trace_id.lower(),)
            ).fetchall()
        if not rows:
            return None
        grouped: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
        for resource, scope, span in rows:
            grouped[resource][scope].append(json.loads(span))
        return {
            "batches": [
                {
                    "resource": json.loads(resource),
                    "scopeSpans": [{"scope": json.loads(scope), "spans": spans} for scope, spans in scopes.items()],
                }
                for resource, scopes in grouped.items()
            ]
        }


def create_app(settings: TraceStoreSettings | None = None) -> FastAPI:
    settings = settings or TraceStoreSettings()
    database = SpanDatabase(settings.path)
    app = create_service_app("ragtrace trace store", settings.max_body_bytes, readiness={})

    @app.post("/v1/traces")
    async def receive(request: Request) -> Response:
        """OTLP/HTTP trace export."""
        body = await request.body()
        export = ExportTraceServiceRequest()
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                json_format.Parse(body, export)
            else:
                export.ParseFromString(body)
        except Exception as error:  # any decoding failure is the sender's: OTLP says 400
            raise HTTPException(400, f"not an OTLP ExportTraceServiceRequest: {error}") from error
        await asyncio.to_thread(database.add, export)
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    @app.get("/api/traces/{trace_id}")
    async def trace(trace_id: str) -> dict[str, Any]:
        """One trace, in Tempo's response shape."""
        found = await asyncio.to_thread(database.trace, trace_id)
        if found is None:
            raise HTTPException(404, f"trace {trace_id} not found")
        return found

    return app


def main() -> None:
    settings = TraceStoreSettings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
