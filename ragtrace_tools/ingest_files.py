"""`ragtrace ingest PATH...`: files and folders into a namespace through the batch endpoint, with progress.

Files are read here with the ingest API's own extraction (ingest/extract.py: .txt, .md, .html, .pdf) and sent
as text; a `.jsonl` file holds one document per line, each a batch item (`text`, `metadata` with its
`title`, optionally `document_id`). A document's id is its path relative to the argument it was found under
(`ragtrace.schemas.document_id_for_path`; a `.jsonl` line adds its line number), so a rerun names the same
documents: before sending, their statuses are read (`POST /ingest/status`) and a document already settled or
on its way with the same content hash is not sent again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from ingest.extract import SUPPORTED_SUFFIXES, UnreadableFile, UnsupportedFileType, extract_text
from ragtrace.ingest_client import AsyncIngestClient, Document, NotSettled, Status, batches
from ragtrace.schemas import MAX_BATCH_DOCUMENTS, DocumentState, content_hash, document_id_for_path

JSONL = ".jsonl"
# Where a rerun need not send a document again: done, or on its way, with this content.
UNCHANGED = frozenset({DocumentState.INDEXED, DocumentState.DUPLICATE, DocumentState.ACCEPTED})


@dataclass(frozen=True)
class Failure:
    source: str  # the file (and line), or the document id
    reason: str


@dataclass
class Collected:
    documents: list[Document] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # document id → file (and line)
    failures: list[Failure] = field(default_factory=list)


def collect(paths: Iterable[Path]) -> Collected:
    """Every supported file under the paths, read into documents; files that cannot be read, as failures."""
    collected = Collected()
    for root in paths:
        for path, relative in _files(root):
            try:
                for document, source in _documents(path, relative):
                    collected.documents.append(document)
                    collected.sources[str(document.document_id)] = source
            except (UnsupportedFileType, UnreadableFile, OSError, ValueError) as error:
                collected.failures.append(Failure(str(path), str(error)))
    return collected


def _files(root: Path) -> Iterator[tuple[Path, str]]:
    """(file, its path relative to the argument) for a file argument or each supported file under a folder."""
    if root.is_file():
        yield root, root.name
        return
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in (*SUPPORTED_SUFFIXES, JSONL):
            yield path, path.relative_to(root).as_posix()


def _documents(path: Path, relative: str) -> Iterator[tuple[Document, str]]:
    if path.suffix.lower() != JSONL:
        text, title = extract_text(path.name, path.read_bytes())
        yield Document(text, title, document_id_for_path(relative), {"source": relative}), relative
        return
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield _jsonl_document(json.loads(line), relative, number), f"{relative}:{number}"


def _jsonl_document(item: Any, relative: str, number: int) -> Document:
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        raise ValueError(f"{relative}:{number}: a line must be a JSON object with 'text'")
    metadata = dict(item.get("metadata") or {})
    title = str(metadata.pop("title", None) or item.get("title") or f"{relative} line {number}")
    document_id = item.get("document_id") or document_id_for_path(f"{relative}/{number}")
    return Document(item["text"], title, str(document_id), {"source": f"{relative}:{number}", **metadata})


@dataclass
class Outcome:
    found: int
    unchanged: int = 0
    sent: int = 0
    statuses: dict[str, Status] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    waited: bool = True

    def count(self, state: str) -> int:
        return sum(s.get("status") == state for s in self.statuses.values())

    @property
    def ok(self) -> bool:
        return not self.failures and self.count(DocumentState.FAILED) == 0


async def ingest_paths(
    client: AsyncIngestClient,
    namespace: str,
    collected: Collected,
    *,
    concurrency: int,
    wait: bool,
    timeout_s: float | None,
    console: Console,
) -> Outcome:
    """Send what changed, in batches, `concurrency` at a time; then, with `wait`, wait until each settles."""
    outcome = Outcome(found=len(collected.documents), failures=list(collected.failures), waited=wait)
    documents = await _changed(client, namespace, collected.documents)
    outcome.unchanged = outcome.found - len(documents)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        sending = progress.add_task("sent", total=len(documents), failed=0, rate="")
        accepted = await _send(client, namespace, documents, concurrency, progress, sending, collected, outcome)
        outcome.sent = len(accepted)
        if wait and accepted:
            indexing = progress.add_task("indexed", total=len(accepted), failed=0, rate="")
            await _wait(client, namespace, accepted, timeout_s, progress, indexing, outcome)
    for document_id, status in outcome.statuses.items():
        if status.get("status") == DocumentState.FAILED:
            outcome.failures.append(Failure(collected.sources.get(document_id, document_id), str(status.get("error"))))
    return outcome


async def _changed(client: AsyncIngestClient, namespace: str, documents: list[Document]) -> list[Document]:
    """The documents whose stored version differs (or that have none): what a rerun sends."""
    current: dict[str, Status | None] = {}
    ids = [str(d.document_id) for d in documents]
    for start in range(0, len(ids), MAX_BATCH_DOCUMENTS):
        current.update(await client.statuses(namespace, ids[start : start + MAX_BATCH_DOCUMENTS]))

    def unchanged(document: Document) -> bool:
        status = current.get(str(document.document_id))
        return (
            status is not None
            and status.get("status") in UNCHANGED
            and status.get("content_hash") == content_hash(document.text)
        )

    return [d for d in documents if not unchanged(d)]


async def _send(
    client: AsyncIngestClient,
    namespace: str,
    documents: list[Document],
    concurrency: int,
    progress: Progress,
    task: TaskID,
    collected: Collected,
    outcome: Outcome,
) -> list[str]:
    """The batches, `concurrency` in flight; each refused document a failure with its reason."""
    gate = asyncio.Semaphore(concurrency)
    refused = 0

    async def one(batch: list[Document]) -> list[str]:
        nonlocal refused
        async with gate:
            answer = await client.ingest_batch(namespace, batch)
        ids = []
        for result in answer["results"]:
            if result.get("error"):
                refused += 1
                source = collected.sources.get(str(batch[result["index"]].document_id), "?")
                error = result["error"]
                outcome.failures.append(Failure(source, f"{error['field']}: {error['message']}"))
            else:
                ids.append(str(result["document_id"]))
        progress.update(task, advance=len(batch), failed=refused, rate=_rate(progress, task))
        return ids

    return [d for ids in await asyncio.gather(*(one(b) for b in batches(documents))) for d in ids]


async def _wait(
    client: AsyncIngestClient,
    namespace: str,
    ids: list[str],
    timeout_s: float | None,
    progress: Progress,
    task: TaskID,
    outcome: Outcome,
) -> None:
    failed = 0

    def settled(status: Status) -> None:
        nonlocal failed
        failed += status.get("status") == DocumentState.FAILED
        progress.update(task, advance=1, failed=failed, rate=_rate(progress, task))

    try:
        outcome.statuses = await client.wait_until_settled(namespace, ids, timeout_s=timeout_s, on_settled=settled)
    except NotSettled as late:
        outcome.statuses = late.settled
        outcome.failures.extend(Failure(d, "not settled before the timeout") for d in late.pending)


def _rate(progress: Progress, task: TaskID) -> str:
    speed = progress.tasks[task].speed
    return f"{speed:.1f} docs/s" if speed else ""


def summary(outcome: Outcome) -> Table:
    table = Table("documents", "count", title="ragtrace ingest")
    rows = [
        ("found", outcome.found),
        ("unchanged (not sent)", outcome.unchanged),
        ("sent and accepted", outcome.sent),
    ]
    if outcome.waited:
        rows += [(state.value, outcome.count(state)) for state in (DocumentState.INDEXED, DocumentState.DUPLICATE)]
    rows.append(("failed", len(outcome.failures)))
    for name, count in rows:
        table.add_row(name, str(count))
    return table


def failures(outcome: Outcome) -> Table:
    table = Table("source", "reason", title="failures")
    for failure in outcome.failures:
        table.add_row(failure.source, failure.reason)
    return table
