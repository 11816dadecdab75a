"""Synthetic chunks for measuring search at scale: what a large corpus costs to search, without embedding one
(the bundled model embeds about 100 chunks/s on 2 cores: a million would take hours).

Vectors (MiniLM's dimension, 384, unit length) have the structure of real text embeddings: they lie near a
low-dimensional subspace and cluster by subject there. A chunk is a point of a `latent_dimension` (32)
space drawn around one of `topics` (256) Gaussian topic centres (spread 0.7; a centre's norm is about
√32), mapped into 384 dimensions by a fixed random orthonormal map, plus isotropic noise (0.05 per
coordinate), then normalized. These parameters were chosen so that, at 5,000 chunks, IVF's recall@10 for
each nprobe follows the curve of MiniLM's real embeddings of the msmarco-5k passages (nprobe 1, 2, 4, 8,
16, 32 of 71 cells, queries = stored vectors moved to a cosine of 0.8: 0.79, 0.88, 0.94, 0.96, 0.98, 1.00
synthetic; 0.84, 0.91, 0.94, 0.97, 0.98, 0.99 real; measured 2026-12-02). What an approximate index costs
depends on that structure: vectors uniform on the sphere, with no neighbour nearer than the rest, would
need a nearly exhaustive search.

Texts: `words_per_chunk` (100) words drawn from a vocabulary of `vocabulary` (50,000) made-up words
(consonant-vowel syllables) with Zipf's law: the word of rank r has probability proportional to 1 / r^1.07,
the shape of English word frequencies, so a few words are in most chunks and most words in few, which is
what BM25's cost depends on. Queries are drawn the same way, 8 words each. Chunk i is the same in every run
(each batch of a given size has its own seed), so a corpus grows from one size to the next by adding chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ragtrace.vectorstore import DocumentChunks, IndexedChunk

MODEL = "synthetic"
CHUNKS_PER_DOCUMENT = 10
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class SyntheticCorpus:
    dimension: int = 384
    latent_dimension: int = 32
    topics: int = 256
    topic_spread: float = 0.7
    noise: float = 0.05
    vocabulary: int = 50_000
    zipf_exponent: float = 1.07
    words_per_chunk: int = 100
    query_words: int = 8
    seed: int = 0

    @cached_property
    def _centres(self) -> np.ndarray:
        return np.random.default_rng([self.seed, 0]).standard_normal((self.topics, self.latent_dimension))

    @cached_property
    def _embedding(self) -> np.ndarray:
        """The fixed orthonormal map from the latent space into the vectors' dimension."""
        gaussian = np.random.default_rng([self.seed, 3]).standard_normal((self.dimension, self.latent_dimension))
        orthonormal: np.ndarray = np.linalg.qr(gaussian)[0].T
        return orthonormal

    @cached_property
    def _words(self) -> np.ndarray:
        syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
        words = []
        for rank in range(self.vocabulary):
            word, number = "", rank + len(syllables)  # at least two syllables
            while number:
                number, digit = divmod(number, len(syllables))
                word += syllables[digit]
            words.append(word)
        return np.asarray(words, dtype=object)

    @cached_property
    def _cumulative(self) -> np.ndarray:
        weights = 1.0 / np.arange(1, self.vocabulary + 1) ** self.zipf_exponent
        return np.cumsum(weights / weights.sum())

    def vectors(self, rng: np.random.Generator, count: int) -> np.ndarray:
        topic = rng.integers(0, self.topics, count)
        latent = self._centres[topic] + self.topic_spread * rng.standard_normal((count, self.latent_dimension))
        return _unit(latent @ self._embedding + self.noise * rng.standard_normal((count, self.dimension)))

    def texts(self, rng: np.random.Generator, count: int, words: int) -> list[str]:
        ranks = np.searchsorted(self._cumulative, rng.random((count, words)))
        return [" ".join(row) for row in self._words[np.minimum(ranks, self.vocabulary - 1)]]

    def chunk_batch(self, batch: int, batch_chunks: int) -> list[DocumentChunks]:
        """Chunks batch * batch_chunks up to the next batch, as documents of CHUNKS_PER_DOCUMENT chunks."""
        rng = np.random.default_rng([self.seed, 1, batch, batch_chunks])
        vectors = self.vectors(rng, batch_chunks)
        texts = self.texts(rng, batch_chunks, self.words_per_chunk)
        first = batch * batch_chunks
        documents = []
        for start in range(0, batch_chunks, CHUNKS_PER_DOCUMENT):
            document_id = f"doc-{(first + start) // CHUNKS_PER_DOCUMENT}"
            chunks = [
                IndexedChunk(f"{document_id}:{n}", n, texts[start + n], 0, len(texts[start + n]), vectors[start + n])
                for n in range(min(CHUNKS_PER_DOCUMENT, batch_chunks - start))
            ]
            documents.append(DocumentChunks(document_id, {"title": document_id}, chunks, model=MODEL))
        return documents

    def batches(self, start: int, stop: int, batch_chunks: int) -> Iterator[list[DocumentChunks]]:
        """Chunks start..stop (multiples of batch_chunks) in batches, the same chunks in every run."""
        for batch in range(start // batch_chunks, stop // batch_chunks):
            yield self.chunk_batch(batch, batch_chunks)

    def queries(self, count: int, seed: int = 1) -> list[tuple[str, np.ndarray]]:
        """(text, vector) queries drawn as chunks are, from another seed."""
        rng = np.random.default_rng([self.seed, 2, seed])
        return list(zip(self.texts(rng, count, self.query_words), self.vectors(rng, count), strict=True))


def _unit(vectors: np.ndarray) -> np.ndarray:
    unit: np.ndarray = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return unit
