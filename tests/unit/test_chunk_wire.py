"""The chunks topic's vectors on the wire: float32 bytes in base64, read back exactly; chunk batches written
with JSON arrays (before 2026-12-07) still read; a malformed vector refused, naming the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from pydantic import ValidationError

from ragtrace.schemas import Chunk, ChunkBatch, EventType

DIMENSION = 384


def _batch(vector: list[float]) -> ChunkBatch:
    chunk = Chunk(chunk_id="d#0", chunk_no=0, text="a chunk", start=0, end=7, vector=vector)
    return ChunkBatch(
        type=EventType.UPSERT,
        document_id="d",
        namespace="n",
        ingest_id="i",
        accepted_at=datetime.now(UTC),
        chunks=[chunk],
        dimension=DIMENSION,
    )


@pytest.fixture
def vector() -> list[float]:
    values = np.random.default_rng(7).standard_normal(DIMENSION).astype(np.float32)
    return [float(x) for x in values / np.linalg.norm(values)]


def test_a_published_vector_is_base64_float32_and_reads_back_exactly(vector: list[float]) -> None:
    wire = _batch(vector).model_dump_json().encode()  # JSON mode, as a FastStream publisher encodes it
    sent = json.loads(wire)["chunks"][0]["vector"]
    assert isinstance(sent, str) and len(sent) == 4 * DIMENSION * 4 // 3  # 1,536 bytes in base64
    assert ChunkBatch.model_validate_json(wire).chunks[0].vector == vector
    as_arrays = json.dumps(_batch(vector).model_dump(mode="python"), default=str).encode()
    assert len(wire) < len(as_arrays) / 3


def test_a_batch_written_with_a_json_array_still_reads(vector: list[float]) -> None:
    earlier = json.dumps(_batch(vector).model_dump(mode="python"), default=str)
    assert ChunkBatch.model_validate_json(earlier).chunks[0].vector == vector


@pytest.mark.parametrize(("vector", "problem"), [("not base64!", "not base64"), ("AAAA", "float32")])
def test_a_malformed_vector_is_refused_naming_it(vector: str, problem: str) -> None:
    wire = _batch([0.0]).model_dump_json().encode().replace(b'"AAAAAA=="', json.dumps(vector).encode())
    with pytest.raises(ValidationError) as refused:
        ChunkBatch.model_validate_json(wire)
    assert refused.value.errors()[0]["loc"] == ("chunks", 0, "vector")
    assert problem in str(refused.value)
