"""`python -m embedding.export` (`make install`, the image's build): the configured CPU backend's ONNX file
exported into the cache (RAGTRACE_EMBEDDING_ONNX_CACHE_DIR), once; a second run finds it and does nothing.
An engine that starts without it exports it itself (a few seconds for all-MiniLM-L6-v2)."""

from __future__ import annotations

import logging
import os

from embedding.onnx_backend import VARIANTS, cache_path, ensure_exported
from embedding.settings import CPU_BACKEND, EmbeddingSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = EmbeddingSettings()
    backend = CPU_BACKEND if settings.backend == "auto" else settings.backend
    if backend == "torch":
        print("embedding backend torch: no ONNX export")
        return
    from embedding.engine import model_path

    path, variant = model_path(settings.model), VARIANTS[backend]
    target = cache_path(settings.onnx_cache_dir, path, settings.model, variant)
    if not target.is_file():
        from sentence_transformers import SentenceTransformer

        target = ensure_exported(
            SentenceTransformer(path, device="cpu"), settings.onnx_cache_dir, path, settings.model, variant
        )
    print(f"embedding backend {backend}: {target}")


if __name__ == "__main__":
    main()
