"""The ingest API's dependencies: the state its lifespan made (ingest/app.py), handed to the routes. Tests
replace them with `app.dependency_overrides`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ingest.ingestion import Ingestion
from ingest.reindex import Reindexing
from ragtrace.http import ReadinessCheck


async def get_ingestion(request: Request) -> Ingestion:
    ingestion: Ingestion = request.app.state.ingestion
    return ingestion


IngestionDep = Annotated[Ingestion, Depends(get_ingestion)]


async def get_reindexing(request: Request) -> Reindexing:
    reindexing: Reindexing = request.app.state.reindexing
    return reindexing


ReindexingDep = Annotated[Reindexing, Depends(get_reindexing)]


async def readiness(ingestion: IngestionDep) -> dict[str, ReadinessCheck]:
    """What /readyz checks: the ingest API cannot accept a document without Kafka and MinIO."""
    return {"kafka": ingestion.check_kafka, "minio": ingestion.check_minio}
