"""Bucket events in and out: objects put, overwritten and deleted through the MinIO client in the watched bucket
become documents, new versions and deletions, through MinIO's own notifications to Kafka and the inbox worker,
on the session's real servers and the running pipeline; a duplicated or late notification changes nothing."""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import Any

import pytest

from ragtrace.tempo import SpanView
from ragtrace_tools.devstack.observability import Observability
from ragtrace_tools.kafka_admin import RawRecord, produce, read_topic
from tests.pipeline import Pipeline, frozen, wait_until
from tests.traces import path_to_root, searchable_document_traces, whole_tree


@pytest.fixture
def inbox(faiss_pipeline: Pipeline) -> Pipeline:
    if not faiss_pipeline.infra.notifies_kafka:
        pytest.skip("this session's MinIO (testcontainers) publishes no bucket events to Kafka")
    return faiss_pipeline


def _namespace() -> str:
    return "bucket-" + uuid.uuid4().hex[:8]


def _put(pipeline: Pipeline, name: str, text: str) -> None:
    data = text.encode()
    pipeline.minio().put_object(pipeline.inbox_bucket, name, io.BytesIO(data), len(data))


def _indexed(pipeline: Pipeline, document_ids: list[str], namespace: str) -> dict[str, dict[str, Any]]:
    """Their statuses once indexed; a document written to the bucket has none until the inbox worker has
    accepted it, so the wait starts once each has one."""

    def known() -> bool:
        with pipeline.http() as client:
            return all(
                client.get(f"/ingest/{i}", params={"namespace": namespace}).status_code == 200 for i in document_ids
            )

    wait_until(known, 60, 0.1, f"the inbox worker to accept {document_ids}")
    return pipeline.wait_for(document_ids, namespace)


def _found(pipeline: Pipeline, namespace: str, word: str) -> list[str]:
    """The documents a keyword search of the namespace finds, through the gateway."""
    response = pipeline.search(query=word, namespace=namespace, mode="keyword", generate=False)
    assert response.status_code == 200, response.text
    return sorted({source["document_id"] for source in response.json()["sources"]})


def _settled_version(pipeline: Pipeline, document_id: str, namespace: str, before: dict[str, Any]) -> dict[str, Any]:
    """The document's status once a version newer than `before` is indexed."""

    def newer() -> dict[str, Any] | None:
        status = pipeline.status(document_id, namespace)
        return status if status["status"] == "indexed" and status["ingest_id"] != before["ingest_id"] else None

    settled: dict[str, Any] = wait_until(newer, 90, 0.1, f"a new version of {document_id} indexed")
    return settled


def _notifications(pipeline: Pipeline, object_name: str) -> list[RawRecord]:
    """MinIO's notifications of the object on the inbox topic, in order."""
    key = f"{pipeline.inbox_bucket}/{object_name}".encode()
    records = asyncio.run(read_topic(pipeline.kafka.bootstrap_servers, pipeline.kafka.inbox_topic, key))
    return [r for r in records if r.key == key]


def _both_copies(pipeline: Pipeline, object_name: str, event_name: bytes) -> list[RawRecord]:
    """The object's notifications of this kind once both of MinIO's targets have published theirs (the
    durable one replays its queue every 3 s)."""
    copies: list[RawRecord] = wait_until(
        lambda: (found := [r for r in _notifications(pipeline, object_name) if event_name in r.value])[1:] and found,
        30,
        0.2,
        f"both of MinIO's notifications of {event_name.decode()} on {object_name}",
    )
    return copies


def _publish_again(pipeline: Pipeline, records: list[RawRecord]) -> None:
    """Publish the notifications onto the inbox topic once more, as they are, and wait until they are handled."""
    asyncio.run(produce(pipeline.kafka.bootstrap_servers, pipeline.kafka.inbox_topic, records))
    pipeline.wait_drained(topics=[pipeline.kafka.inbox_topic])


def test_put_overwrite_and_delete_in_the_bucket_index_reindex_and_remove_the_document(inbox: Pipeline) -> None:
    namespace = _namespace()
    _put(inbox, f"{namespace}/guides/tides.md", "# Tides\n\nThe pull of the moon raises the tides twice a day.")
    _put(inbox, f"{namespace}/kelp.txt", "Kelp forests grow along cold, nutrient-rich coasts.")

    statuses = _indexed(inbox, ["guides:tides.md", "kelp.txt"], namespace)
    first = statuses["guides:tides.md"]
    assert _found(inbox, namespace, "moon") == ["guides:tides.md"]
    with inbox.vector_store() as store:
        [hit] = store.keyword_search(namespace, "moon", 5)
    assert hit.metadata["source"] == f"s3://{inbox.inbox_bucket}/{namespace}/guides/tides.md"
    assert hit.metadata["title"] == "tides" and hit.metadata["etag"]

    _put(inbox, f"{namespace}/guides/tides.md", "# Tides\n\nThe sun adds its own pull: spring tides and neap tides.")
    second = _settled_version(inbox, "guides:tides.md", namespace, first)
    assert second["content_hash"] != first["content_hash"]
    assert _found(inbox, namespace, "moon") == [], "the earlier version's chunks are gone"
    assert _found(inbox, namespace, "spring") == ["guides:tides.md"]

    inbox.minio().remove_object(inbox.inbox_bucket, f"{namespace}/guides/tides.md")
    inbox.wait_for(["guides:tides.md"], namespace, states=("deleted",))
    assert _found(inbox, namespace, "spring") == []
    assert _found(inbox, namespace, "kelp") == ["kelp.txt"], "the other object's document stays"


def test_a_duplicated_or_late_notification_changes_nothing(inbox: Pipeline) -> None:
    namespace = _namespace()
    name = f"{namespace}/reef.txt"
    _put(inbox, name, "Coral reefs are built by colonies of tiny animals called polyps.")
    indexed = _indexed(inbox, ["reef.txt"], namespace)["reef.txt"]
    created = wait_until(lambda: _notifications(inbox, name), 30, 0.2, "MinIO's notification of the put")[0]
    assert b"s3:ObjectCreated:Put" in created.value

    _publish_again(inbox, [created])
    assert inbox.status("reef.txt", namespace) == indexed, "same object, same content: no new version"
    assert _found(inbox, namespace, "polyps") == ["reef.txt"]

    inbox.minio().remove_object(inbox.inbox_bucket, name)
    deleted = inbox.wait_for(["reef.txt"], namespace, states=("deleted",))["reef.txt"]
    removed = next(r for r in _notifications(inbox, name) if b"s3:ObjectRemoved:Delete" in r.value)

    # The put's notification, late: the object is gone by now, so the document stays deleted.
    _publish_again(inbox, [created])
    assert inbox.status("reef.txt", namespace) == deleted
    # The delete's, again: nothing left to delete.
    _publish_again(inbox, [removed])
    assert inbox.status("reef.txt", namespace) == deleted
    with inbox.vector_store() as store:
        assert store.keyword_search(namespace, "polyps", 5) == []


def test_a_late_copy_of_the_put_in_the_same_batch_as_the_delete_does_not_hide_the_delete(inbox: Pipeline) -> None:
    """MinIO's durable target sends a copy of each event up to 3 s late, so the put's copy may reach the inbox
    worker after the delete's notifications, in one batch. Acting on the batch's last arrival, a copy of an
    event applied already, skipped the delete (the bench's delete-to-gone p99 was 3.1 s in 2 of 28 runs, until
    the delete's own copy came). Here no copy of the delete comes after the batch."""
    namespace = _namespace()
    name = f"{namespace}/lagoon.txt"
    _put(inbox, name, "A lagoon is shallow water cut off from the sea by a reef or a sandbar.")
    _indexed(inbox, ["lagoon.txt"], namespace)
    created = _both_copies(inbox, name, b"s3:ObjectCreated:Put")[0]
    inbox.wait_drained(topics=[inbox.kafka.inbox_topic])  # the worker remembers the put as applied

    pid = inbox.supervisor.pid("inbox-worker")
    assert pid is not None
    with frozen(pid):  # so that the delete's notifications and the late copy arrive together
        # A fetch the worker sent before it froze is answered by the first record to arrive: another copy of the
        # put, so that the ones after it come in one batch.
        asyncio.run(produce(inbox.kafka.bootstrap_servers, inbox.kafka.inbox_topic, [created]))
        inbox.minio().remove_object(inbox.inbox_bucket, name)
        _both_copies(inbox, name, b"s3:ObjectRemoved:Delete")
        asyncio.run(produce(inbox.kafka.bootstrap_servers, inbox.kafka.inbox_topic, [created]))

    inbox.wait_for(["lagoon.txt"], namespace, states=("deleted",), timeout_s=30)
    assert _found(inbox, namespace, "lagoon") == []


def test_an_object_that_cannot_become_a_document_is_dead_lettered_with_the_reason(inbox: Pipeline) -> None:
    namespace = _namespace()
    _put(inbox, f"{namespace}/minutes.docx", "not a supported file type")
    _put(inbox, f"{namespace}/scan.pdf", "%PDF-1.4 not really a PDF")
    dead_letters = inbox.kafka.dead_letter_topic(inbox.kafka.inbox_topic)
    prefix = f"{inbox.inbox_bucket}/{namespace}/".encode()

    def both() -> dict[bytes, dict[str, str]] | None:
        records = asyncio.run(read_topic(inbox.kafka.bootstrap_servers, dead_letters, prefix))
        found = {r.key or b"": {k: v.decode() for k, v in r.headers} for r in records}
        return found if len(found) == 2 else None

    found = wait_until(both, 60, 0.2, "both objects on the dead-letter topic")
    docx = found[prefix + b"minutes.docx"]
    assert docx["ragtrace.error.type"] == "PoisonMessage"
    assert "not a supported file type" in docx["ragtrace.error.message"]
    assert "PDF could not be read" in found[prefix + b"scan.pdf"]["ragtrace.error.message"]
    with inbox.http() as client:
        assert client.get(f"/ingest/minutes.docx?namespace={namespace}").status_code == 404


def test_an_object_event_starts_one_trace_through_the_workers_found_by_document_id(
    inbox: Pipeline, observability: Observability
) -> None:
    namespace = _namespace()
    _put(inbox, f"{namespace}/lighthouse.txt", "A lighthouse's lens gathers the lamp's light into one beam.")
    status = _indexed(inbox, ["lighthouse.txt"], namespace)["lighthouse.txt"]
    kafka = inbox.kafka

    process_inbox = ("inbox-worker", f"process {kafka.inbox_topic}")
    wanted = {process_inbox, ("indexer-worker", "index write")}
    spans: list[SpanView] = wait_until(
        lambda: whole_tree(observability.tempo_url, status["trace_id"], wanted), 30, 0.3, "the object's trace"
    )
    by_id = {s.span_id: s for s in spans}
    [root] = [s for s in spans if not s.parent_span_id]
    assert (root.service, root.name) == process_inbox and root.kind == "consumer"
    assert root.attributes["document.id"] == "lighthouse.txt"
    assert root.attributes["ragtrace.namespace"] == namespace
    assert root.attributes["ragtrace.bucket.event"] == "s3:ObjectCreated:Put"
    index_write = next(s for s in spans if s.name == "index write")
    assert [(s.service, s.name) for s in path_to_root(index_write, by_id)] == [
        ("indexer-worker", "index write"),
        ("indexer-worker", f"process {kafka.chunks_topic}"),
        ("embedding-worker", f"{kafka.chunks_topic} send"),
        ("embedding-worker", f"process {kafka.documents_topic}"),
        ("inbox-worker", f"{kafka.documents_topic} send"),
        process_inbox,
    ]

    [found] = wait_until(
        lambda: searchable_document_traces(observability.tempo_url, "lighthouse.txt", namespace),
        60,
        1,
        "TraceQL to find the object's trace by document.id",
    )
    assert found.trace_id == status["trace_id"]
    assert (found.root_service, found.root_name) == process_inbox
