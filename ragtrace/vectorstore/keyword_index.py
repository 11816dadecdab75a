"""The keyword index of one namespace: BM25 over an in-memory Tantivy index, kept in step with the change log.

Tantivy is an inverted index with dynamic pruning (block-max WAND): a query's top k costs about the same at
10k chunks as at 1M, where SQLite FTS5, which this replaces, scored every chunk holding any query word. Like
the FAISS index beside it (faiss_index.py), each process keeps its own copy, built from the namespace's rows
the first time it is searched and brought up to the last committed change before every search: the SQLite
file stays the only thing written and the only thing that must survive a crash.
"""

from __future__ import annotations

import math
import sqlite3
from typing import cast

import tantivy

from ragtrace.vectorstore.faiss_index import Changes

# Tantivy's en_stem, built here so that queries go through the very analyzer the text went through: split on
# what is not a letter or digit, drop tokens over 40 bytes, lowercase, fold accents ("Zürich" and "zurich" are
# one word, as FTS5's unicode61 made them), English Snowball stemmer (the FTS5 index this replaces used
# `porter unicode61`, the same steps). Queries are analyzed, never parsed: nothing of the user's text is read
# as query syntax.
_ANALYZER_NAME = "ragtrace_english"
_ANALYZER = (
    tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
    .filter(tantivy.Filter.remove_long(40))
    .filter(tantivy.Filter.lowercase())
    .filter(tantivy.Filter.ascii_fold())
    .filter(tantivy.Filter.stemmer("english"))
    .build()
)
# One field, the chunk's text and its document's title together: BM25 weighs a title word like any other word
# of the row and normalizes by the row's whole length, as FTS5's bm25() did over its two columns. (Two fields
# would add a second, title-only BM25 whose short length boosts every title match: hybrid nDCG@10 fell by
# 0.009 to 0.010 on cranfield that way, same vectors.)
_FIELD = "text"
# The writer's memory arena: documents are flushed into a new segment whenever it fills, and a query visits
# every segment. Built with 64 MB, 300k synthetic chunks made several segments and searched in p50 7 ms; with
# room for them all, one segment and 4.8 ms (2026-12-07). The arena takes memory only as it fills (a change
# set of a few chunks touches little of it) and gives it back at the commit: a million chunks of 100 words
# built into one segment with the process peaking at 643 MiB.
_WRITER_HEAP_BYTES = 1_500_000_000


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_integer_field("id", indexed=True, fast=True)  # the chunk's row id (= its FAISS id)
    builder.add_text_field(_FIELD, tokenizer_name=_ANALYZER_NAME, index_option="freq")  # no positions: no phrases
    return builder.build()


_SCHEMA = _schema()


class KeywordIndex:
    """One namespace's Tantivy index and the last change-log entry applied to it."""

    def __init__(self, seq: int) -> None:
        self.index = tantivy.Index(_SCHEMA)  # no path: in memory
        self.index.register_tokenizer(_ANALYZER_NAME, _ANALYZER)
        self.seq = seq
        self._searcher = self.index.searcher()

    @classmethod
    def build(cls, db: sqlite3.Connection, seq: int) -> KeywordIndex:
        """The index of every chunk row, as of change `seq` or later: rows read after `seq` may already show a
        later change, which the next apply_changes then applies again, harmlessly."""
        built = cls(seq)
        writer = built._writer()
        for row_id, content, title in db.execute("SELECT id, content, title FROM chunks"):
            writer.add_document(_document(row_id, content, title))
        built._commit(writer)
        return built

    def apply_changes(self, db: sqlite3.Connection, latest: int) -> None:
        """Apply the change log after `seq` up to `latest`: removals, then the rows added that still exist.
        Applying a change twice is harmless: an added id is removed first."""
        changes = Changes.read(db, self.seq, latest)
        if changes.removed or changes.added:
            writer = self._writer()
            for row_id in (*changes.removed, *changes.added):
                writer.delete_documents_by_term("id", row_id)
            for row_id, content, title in changes.added_rows(db, "content, title"):
                writer.add_document(_document(row_id, content, title))
            self._commit(writer)
        self.seq = latest

    def search(self, query: str, top_k: int) -> list[tuple[int, float]]:
        """(chunk row id, BM25 score) of the top_k chunks matching any word of the query, best first."""
        terms = list(dict.fromkeys(_ANALYZER.analyze(query)))
        if not terms or top_k <= 0:
            return []
        any_term = tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, _weighted(self._searcher, term)) for term in terms]
        )
        # count=False: counting every match would visit them all, which is what dynamic pruning avoids.
        hits = self._searcher.search(any_term, top_k, count=False).hits
        # Every document has the i64 `id` column: no value is None.
        ids = cast(list[int], self._searcher.fast_field_values("id", [address for _, address in hits]))
        return [(row_id, float(score)) for (score, _), row_id in zip(hits, ids, strict=True)]

    def _writer(self) -> tantivy.IndexWriter:
        # One thread: the search processes run beside the workers on a few cores. Opened per change set and
        # dropped after its commit, so an idle namespace holds no writer's arena.
        return self.index.writer(_WRITER_HEAP_BYTES, 1)

    def _commit(self, writer: tantivy.IndexWriter) -> None:
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self._searcher = self.index.searcher()


def _weighted(searcher: tantivy.Searcher, term: str) -> tantivy.Query:
    """The term's BM25 query, weighted so that its IDF is the Robertson-Sparck Jones weight
    ln((N - n + 0.5) / (n + 0.5)), floored at 1e-6, which SQLite FTS5 used and the hybrid ranking was chosen
    with, instead of Tantivy's (Lucene's) ln(1 + (N - n + 0.5) / (n + 0.5)). They differ most for common words:
    RSJ gives a word in half the chunks or more no weight (it is no evidence), Lucene's still counts it, and
    the keyword list's deeper ranks then fill with chunks that share "the" or "what" with the question (hybrid
    nDCG@10 0.009 lower on cranfield, same vectors). A boost scales the term's whole score, so block-max WAND
    prunes as before."""
    total, found = searcher.num_docs, searcher.doc_freq(_FIELD, term)
    # At least even odds: a deleted chunk counts in doc_freq until its segment is merged, not in num_docs, so
    # a word can seem to be in more chunks than there are.
    odds = max((total - found + 0.5) / (found + 0.5), 1.0)
    query = tantivy.Query.term_query(_SCHEMA, _FIELD, term, index_option="freq")
    return tantivy.Query.boost_query(query, max(math.log(odds), 1e-6) / math.log1p(odds))


def _document(row_id: int, content: str, title: str) -> tantivy.Document:
    return tantivy.Document(id=row_id, text=f"{title}\n{content}")
