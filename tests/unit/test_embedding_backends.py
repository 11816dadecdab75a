"""The embedding engine's backends: the setting, the ONNX engine's vectors next to torch's, length-sorted
batches put back in the caller's order, and the embedding service's micro-batches. The ONNX files are exported
into a temporary cache (a few seconds, no network: the source is the bundled model)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from embedding.engine import EmbeddingEngine, resolve_backend
from embedding.onnx_backend import VARIANTS, cache_path, length_order, restore_order, u8s8_saturates
from embedding.server import MicroBatcher
from embedding.settings import CPU_BACKEND, EmbeddingSettings

TEXTS = [
    "Sourdough bread rises overnight.",
    "The moon raises the tides twice a day, and the sun adds its own smaller pull, which is why spring tides "
    "are higher than neap tides.",
    "ONNX Runtime runs the exported graph on the CPU.",
    "Tides.",
    "What is the boiling point of water at the top of Mount Everest?",
]
# Degenerate inputs (no chunk is empty, but a query may be): only their place in the output is checked.
EDGES = ["", "x"]


def test_the_backend_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert EmbeddingSettings().backend == "auto"
    monkeypatch.setenv("RAGTRACE_EMBEDDING_BACKEND", "onnx-int8")
    monkeypatch.setenv("RAGTRACE_EMBEDDING_ONNX_THREADS", "1")
    settings = EmbeddingSettings()
    assert (settings.backend, settings.onnx_threads) == ("onnx-int8", 1)
    monkeypatch.setenv("RAGTRACE_EMBEDDING_BACKEND", "tensorflow")
    with pytest.raises(ValidationError):
        EmbeddingSettings()


def test_auto_is_torch_on_cuda_and_the_measured_default_on_cpu() -> None:
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("auto", "cuda:1") == "torch"
    assert resolve_backend("auto", "cpu") == CPU_BACKEND
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("onnx-int8", "cpu") == "onnx-int8"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend("onnx", "cuda")


def test_length_sorting_is_undone() -> None:
    lengths = [3, 9, 1, 9, 4, 0]
    order = length_order(lengths)
    assert [lengths[i] for i in order] == [9, 9, 4, 3, 1, 0]
    assert list(order[:2]) == [1, 3], "stable: equal lengths keep their order"
    rows = np.arange(len(lengths), dtype=np.float32)[:, None] * np.ones((1, 4), dtype=np.float32)
    assert np.array_equal(restore_order(rows[order], order), rows)


@pytest.fixture(scope="module")
def torch_engine() -> EmbeddingEngine:
    return EmbeddingEngine(EmbeddingSettings(backend="torch", device="cpu"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_the_onnx_engine_embeds_like_torch(
    backend: str, torch_engine: EmbeddingEngine, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGTRACE_EMBEDDING_ONNX_CACHE_DIR", str(cache))
    # Two threads: int8 runs its texts alone, two at a time, whatever the cores of the machine running the test.
    engine = EmbeddingEngine(EmbeddingSettings(backend=backend, batch_size=2, onnx_threads=2))
    assert (engine.backend, engine.device, engine.dimension) == (backend, "cpu", torch_engine.dimension)
    assert engine.onnx is not None and engine.onnx.path.is_relative_to(cache)
    reference = torch_engine.embed(TEXTS)
    vectors = engine.embed(TEXTS)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    cosine = np.sum(vectors * reference, axis=1)
    assert cosine.min() > 0.99, cosine
    # Texts of very different lengths, sorted, batched (fp32) or run alone on two threads (int8), and restored:
    # each row is the vector its text gets alone. (int8 in a batch would scale activations over the batch and
    # its padding, which moves "x" next to a sentence to a cosine of about 0.98.)
    mixed = [*EDGES[:1], *TEXTS[:3], *EDGES[1:], *TEXTS[3:]]
    batched = engine.embed(mixed)
    one_by_one = np.vstack([engine.embed([text]) for text in mixed])
    assert np.allclose(batched, one_by_one, atol=1e-5)


@pytest.mark.parametrize(
    ("flags", "saturates"),
    [
        ("fpu sse2 avx2 fma", True),  # AVX2 only (an AMD EPYC of 2026-12-06): u8 x s8 pairs saturate in 16 bits
        ("fpu avx2 avx512f avx512_vnni", False),
        ("fpu avx2 avx_vnni", False),
        ("fpu avx2 amx_int8 amx_tile", False),
        ("fpu avx2 avx512_vnni_not_a_flag", True),
    ],
)
def test_int8_weights_only_where_the_cpu_has_vnni(flags: str, saturates: bool, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert u8s8_saturates(cpuinfo) is saturates


def test_an_unreadable_cpu_description_gets_the_safe_int8_recipe_and_each_recipe_its_own_file(tmp_path: Path) -> None:
    assert u8s8_saturates(tmp_path / "missing")
    int8 = VARIANTS["onnx-int8"]
    other = replace(int8, weights="uint8" if int8.weights == "int8" else "int8")
    files = {cache_path(tmp_path, "model", "m", variant) for variant in (int8, other)}
    assert len(files) == 2, "a model quantized on another CPU is never reused here"


def test_the_export_is_made_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTRACE_EMBEDDING_ONNX_CACHE_DIR", str(cache))
    first = EmbeddingEngine(EmbeddingSettings(backend="onnx"))
    assert first.onnx is not None
    written = first.onnx.path.stat().st_mtime_ns
    second = EmbeddingEngine(EmbeddingSettings(backend="onnx"))
    assert second.onnx is not None and second.onnx.path == first.onnx.path
    assert second.onnx.path.stat().st_mtime_ns == written


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_the_micro_batcher_gathers_callers_and_each_gets_the_vector_of_its_text_alone(
    backend: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGTRACE_EMBEDDING_ONNX_CACHE_DIR", str(cache))
    engine = EmbeddingEngine(EmbeddingSettings(backend=backend, batch_size=4), serves_queries=True)
    calls: list[int] = []
    embed = engine.embed

    def counted(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return embed(texts)

    monkeypatch.setattr(engine, "embed", counted)
    queries = [f"{text} ({number})" for number in range(3) for text in TEXTS]

    async def concurrently() -> list[np.ndarray]:
        batcher = MicroBatcher(engine, engine.batch_size)
        running = asyncio.create_task(batcher.run())
        try:
            return await asyncio.gather(*(batcher.embed(q) for q in queries))
        finally:
            running.cancel()

    vectors = np.vstack(asyncio.run(concurrently()))
    assert sum(calls) == len(queries) and max(calls) <= engine.batch_size
    alone = np.vstack([embed([q]) for q in queries])
    assert len(calls) < len(queries), f"callers waiting together shared model calls: {calls}"
    assert np.allclose(vectors, alone, atol=1e-5), "each query's vector is the one it gets alone, whoever else asks"
