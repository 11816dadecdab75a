"""Re-indexing a namespace, as the ingest API runs it (docs/reindex.md): start, follow, finish, resume.

Start: a new generation of the namespace's index is begun first, and only then are the documents listed, so
that any document changed after the listing reaches the new generation through its own event (the indexer
writes every owner's event into both generations meanwhile). The job record is written (one job at a time:
ragtrace/reindex.py), and one re-index event per rebuildable document is published on the documents topic.

Follow and finish: a loop in every replica looks at each running job: the documents done are the ones the new
generation holds; one that is missing and no longer rebuildable (deleted, failed, a duplicate meanwhile) is
`gone`. When none is pending the namespace switches to the new generation (the old one is dropped) and its
cached search results are invalidated; when some failed (dead-lettered), the job is `failed` instead and the
old generation keeps serving: POST again retries them.

Resume: a job that has made no progress for `reindex_stall_s`, or that this process sees first (after a
restart), has the events of its pending documents published again; writes are idempotent, so an event
published twice rebuilds its document once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from redis.asyncio import Redis

from ingest.settings import IngestSettings
from ragtrace.cache import bump_namespace
from ragtrace.errors import AlreadyRunning, DependencyUnavailable, NamespaceNotFound
from ragtrace.messaging import Publisher
from ragtrace.reindex import ReindexJobs, rebuildable, reindex_event
from ragtrace.schemas import DocumentRecord, ReindexJob, ReindexProgress, ReindexState, message_key
from ragtrace.settings import KafkaSettings
from ragtrace.storage import Conflict, DocumentStore
from ragtrace.vectorstore.generations import GenerationalStore

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# MinIO reads and Kafka publishes a re-index has in flight at once.
CONCURRENCY = 32


class Reindexing:
    def __init__(
        self,
        store: DocumentStore,
        index: GenerationalStore,
        publisher: Publisher,
        kafka: KafkaSettings,
        cache: Redis[bytes],
        settings: IngestSettings,
    ) -> None:
        self.store = store
        self.jobs = ReindexJobs(store)
        self.index = index
        self.publisher = publisher
        self.kafka = kafka
        self.cache = cache
        self.settings = settings
        self._publishing: dict[str, asyncio.Task[None]] = {}
        self._last_done: dict[str, tuple[int, float]] = {}  # namespace → (documents done, since when)

    async def start(self, namespace: str) -> ReindexProgress:
        """Start re-indexing the namespace; retry the failed documents of a failed re-index."""
        await asyncio.to_thread(self.store.ensure_bucket)
        job, etag = await asyncio.to_thread(self.jobs.read, namespace)
        if job is not None and job.state is ReindexState.RUNNING:
            raise _running(job)
        if job is not None and job.state is ReindexState.FAILED:
            retried = list(job.failed)
            job = job.model_copy(update={"state": ReindexState.RUNNING, "failed": {}, "finished_at": None})
        else:
            if not await asyncio.to_thread(self.store.document_ids, namespace):
                raise NamespaceNotFound(f"namespace '{namespace}' has no documents to re-index")
            generation = await asyncio.to_thread(self.index.begin, namespace)
            # Listed once the new generation exists: a document changed from now on reaches it by its own event.
            ids = await asyncio.to_thread(self.store.document_ids, namespace)
            records = await self._records(namespace, ids)
            retried = sorted(d for d, record in records.items() if rebuildable(record))
            job = ReindexJob(namespace=namespace, generation=generation, documents=retried)
        try:
            await asyncio.to_thread(self.jobs.write, job, etag)
        except Conflict:
            current, _ = await asyncio.to_thread(self.jobs.read, namespace)
            raise _running(current or job) from None
        self._last_done[namespace] = (-1, time.monotonic())
        self._publish_in_background(job, retried)
        log.info("re-indexing %d documents of namespace %s into generation %d", len(retried), namespace, job.generation)
        return await self.progress(namespace)

    async def progress(self, namespace: str) -> ReindexProgress:
        job, _ = await asyncio.to_thread(self.jobs.read, namespace)
        if job is None:
            raise NamespaceNotFound(f"no re-index of namespace '{namespace}' was started")
        if job.state is ReindexState.DONE:  # the rest were all in when it switched
            done = len(job.documents) - len(job.gone) - len(job.failed)
        else:
            done = len(await self._present(job))
        return ReindexProgress(
            namespace=namespace,
            generation=job.generation,
            state=job.state,
            total=len(job.documents),
            done=done,
            failed=job.failed,
            gone=len(job.gone),
            started_at=job.started_at,
            finished_at=job.finished_at,
        )

    async def run(self) -> None:
        """Advance every running job, again and again (the ingest API's lifespan runs this in a task)."""
        bucket_ready = False
        while True:
            try:
                if not bucket_ready:  # a fresh deployment's: there are no jobs before it exists
                    await asyncio.to_thread(self.store.ensure_bucket)
                    bucket_ready = True
                for namespace in await asyncio.to_thread(self.jobs.namespaces):
                    await self.advance(namespace)
            except DependencyUnavailable as error:  # the next round tries again
                log.warning("re-index jobs wait: %s", error)
            except Exception:
                log.exception("advancing the re-index jobs failed")
            await asyncio.sleep(self.settings.reindex_poll_s)

    async def advance(self, namespace: str) -> None:
        """Look at the namespace's job once: count what is gone, publish again what stalled, finish it."""
        job, _ = await asyncio.to_thread(self.jobs.read, namespace)
        if job is None or job.state is not ReindexState.RUNNING:
            return
        settled = await self._present(job) | set(job.failed) | set(job.gone)
        pending = [d for d in job.documents if d not in settled]
        stalled_s = self._stalled_s(namespace, len(job.documents) - len(pending))
        if pending and stalled_s > 0:
            records = await self._records(namespace, pending)
            gone = [d for d, record in records.items() if not rebuildable(record)]
            if gone:
                job = await asyncio.to_thread(self.jobs.update, namespace, _with_gone(job.generation, gone)) or job
                pending = [d for d in pending if d not in gone]
            if pending and stalled_s >= self.settings.reindex_stall_s and not self._is_publishing(namespace):
                log.warning("re-index of %s: %d documents pending, publishing them again", namespace, len(pending))
                self._last_done[namespace] = (len(job.documents) - len(pending), time.monotonic())
                self._publish_in_background(job, pending)
        if pending or self._is_publishing(namespace):
            return
        if job.failed:
            await asyncio.to_thread(self.jobs.finish, namespace, job.generation, ReindexState.FAILED)
            log.error("re-index of %s failed for %d documents: %s serves on", namespace, len(job.failed), namespace)
        elif await asyncio.to_thread(self.index.switch, namespace, job.generation):
            await bump_namespace(self.cache, namespace)  # cached results come from the generation dropped
            await asyncio.to_thread(self.jobs.finish, namespace, job.generation, ReindexState.DONE)
            log.info("namespace %s switched to generation %d", namespace, job.generation)

    def _stalled_s(self, namespace: str, done: int) -> float:
        """How long the job has been at `done` documents: 0 when that is new; `reindex_stall_s` when this
        process had not looked at it yet (after a restart: what a crash left unpublished is published again)."""
        now = time.monotonic()
        last = self._last_done.get(namespace)
        if last is None or last[0] != done:
            self._last_done[namespace] = (done, now)
            return self.settings.reindex_stall_s if last is None else 0.0
        return now - last[1]

    async def _present(self, job: ReindexJob) -> set[str]:
        return await asyncio.to_thread(self.index.document_ids, job.namespace, job.generation)

    async def _records(self, namespace: str, ids: Iterable[str]) -> dict[str, DocumentRecord | None]:
        async def read(document_id: str) -> tuple[str, DocumentRecord | None]:
            record, _ = await asyncio.to_thread(self.store.read, namespace, document_id)
            return document_id, record

        return dict(await _bounded(read, ids))

    def _is_publishing(self, namespace: str) -> bool:
        task = self._publishing.get(namespace)
        return task is not None and not task.done()

    def _publish_in_background(self, job: ReindexJob, ids: list[str]) -> None:
        task = asyncio.create_task(self._publish(job, ids), name=f"reindex {job.namespace}")
        self._publishing[job.namespace] = task
        task.add_done_callback(_log_failure)

    async def _publish(self, job: ReindexJob, ids: list[str]) -> None:
        """Each document's re-index event, from its record as it is now (its owner's version)."""

        async def publish(document_id: str) -> None:
            record, _ = await asyncio.to_thread(self.store.read, job.namespace, document_id)
            if record is not None and rebuildable(record):
                key = message_key(job.namespace, document_id)
                await self.publisher.publish(self.kafka.documents_topic, key, reindex_event(record, job.generation))

        await _bounded(publish, ids)

    async def close(self) -> None:
        for task in self._publishing.values():
            task.cancel()
        await asyncio.gather(*self._publishing.values(), return_exceptions=True)


async def _bounded(call: Callable[[T], Awaitable[R]], items: Iterable[T]) -> list[R]:
    """`call` on every item, CONCURRENCY at a time."""
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(item: T) -> R:
        async with limit:
            return await call(item)

    return await asyncio.gather(*(one(item) for item in items))


def _with_gone(generation: int, gone: list[str]) -> Callable[[ReindexJob], ReindexJob | None]:
    def change(job: ReindexJob) -> ReindexJob | None:
        if job.generation != generation or job.state is not ReindexState.RUNNING:
            return None
        return job.model_copy(update={"gone": sorted({*job.gone, *gone})})

    return change


def _running(job: ReindexJob) -> AlreadyRunning:
    return AlreadyRunning(
        f"a re-index of namespace '{job.namespace}' into generation {job.generation} is running: "
        f"GET /namespaces/{job.namespace}/reindex follows it"
    )


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("publishing re-index events failed (published again when the job stalls): %r", error)
