"""POST /ingest → MinIO + Kafka → embedding and indexer workers → FAISS / Weaviate, against real servers."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import uuid
from typing import Any

import httpx
import pytest

from embedding.engine import EmbeddingEngine
from ragtrace_tools.kafka_admin import RawRecord, produce, read_topic
from tests.metrics import value
from tests.pipeline import Pipeline, wait_until

TOPICS = ["thermometers", "volcanoes", "bread baking", "tidal energy", "honeybees", "glaciers", "jazz harmony"]


def _namespace() -> str:
    return "ns-" + uuid.uuid4().hex[:10]


def _long_text(topic: str, sentences: int = 60) -> str:
    """A document long enough to need several chunks."""
    return " ".join(
        f"Sentence {i} about {topic}: facts, figures and a little history of {topic}." for i in range(sentences)
    )


def test_an_ingested_document_becomes_indexed_and_searchable(pipeline: Pipeline, engine: EmbeddingEngine) -> None:
    namespace = _namespace()
    fahrenheit = pipeline.ingest(
        "Daniel Gabriel Fahrenheit invented the mercury thermometer in 1714.",
        namespace,
        "fahrenheit",
        title="Thermometers",
        source="encyclopedia",
    )
    pipeline.ingest(
        "Sourdough bread rises because wild yeast ferments the dough.", namespace, "sourdough", title="Bread"
    )
    assert fahrenheit["status"] == "accepted"
    assert fahrenheit["key"] == f"{namespace}/fahrenheit.json", "one object per document"
    assert len(fahrenheit["trace_id"]) == 32

    statuses = pipeline.wait_for(["fahrenheit", "sourdough"], namespace)
    assert statuses["fahrenheit"]["chunks"] == 1

    with pipeline.vector_store() as store:
        hits = store.search(namespace, engine.embed(["who invented the mercury thermometer?"])[0].tolist(), 2)
    assert [h.document_id for h in hits] == ["fahrenheit", "sourdough"]
    assert hits[0].chunk_id == "fahrenheit:0"
    assert hits[0].metadata["title"] == "Thermometers" and hits[0].metadata["source"] == "encyclopedia"
    assert hits[0].score > hits[1].score


def test_chunks_keep_their_character_offsets(faiss_pipeline: Pipeline, engine: EmbeddingEngine) -> None:
    namespace = _namespace()
    text = _long_text("glaciers")
    faiss_pipeline.ingest(text, namespace, "glaciers")
    chunks = faiss_pipeline.wait_for(["glaciers"], namespace)["glaciers"]["chunks"]
    assert chunks >= 3
    with faiss_pipeline.vector_store() as store:
        hits = store.search(namespace, engine.embed(["glaciers"])[0].tolist(), 50)
    assert len(hits) == chunks
    for hit in hits:
        assert text[hit.metadata["start"] : hit.metadata["end"]] == hit.content


def test_reposting_is_idempotent_and_new_content_replaces_the_old(faiss_pipeline: Pipeline) -> None:
    namespace = _namespace()
    first = faiss_pipeline.ingest(_long_text("volcanoes"), namespace, "doc")
    before = faiss_pipeline.wait_for(["doc"], namespace)["doc"]
    again = faiss_pipeline.ingest(_long_text("volcanoes"), namespace, "doc")
    assert again["status"] == "indexed", "same id, same content: no new work"
    assert faiss_pipeline.status("doc", namespace)["ingest_id"] == before["ingest_id"]

    replaced = faiss_pipeline.ingest("A short replacement about tides.", namespace, "doc")
    assert replaced["content_hash"] != first["content_hash"]
    after = wait_until(
        lambda: (
            (s := faiss_pipeline.status("doc", namespace))["status"] == "indexed"
            and s["content_hash"] == replaced["content_hash"]
            and s
        ),
        what="the new version indexed",
    )
    assert after["chunks"] == 1
    with faiss_pipeline.vector_store() as store:
        assert store.count(namespace, "doc") == 1, "the old version's chunks are gone"


def test_duplicate_content_in_a_namespace_is_reported(faiss_pipeline: Pipeline) -> None:
    namespace = _namespace()
    faiss_pipeline.ingest("Honeybees communicate through a waggle dance.", namespace, "original")
    faiss_pipeline.wait_for(["original"], namespace)
    faiss_pipeline.ingest("Honeybees communicate through a waggle dance.", namespace, "copy")
    status = faiss_pipeline.wait_for(["copy"], namespace, states=("duplicate",))["copy"]
    assert status["duplicate_of"] == "original"
    with faiss_pipeline.vector_store() as store:
        assert store.count(namespace, "copy") == 0
        assert store.count(namespace, "original") == 1
    other = _namespace()
    faiss_pipeline.ingest("Honeybees communicate through a waggle dance.", other, "copy")
    assert faiss_pipeline.wait_for(["copy"], other)["copy"]["chunks"] == 1, "duplicates are per namespace"


def test_delete_removes_the_chunks_and_marks_the_document_deleted(pipeline: Pipeline) -> None:
    namespace = _namespace()
    pipeline.ingest(_long_text("tidal energy", 30), namespace, "tides")
    pipeline.ingest("Jazz harmony uses extended chords.", namespace, "jazz")
    pipeline.wait_for(["tides", "jazz"], namespace)
    with pipeline.http() as client:
        response = client.delete("/documents/tides", params={"namespace": namespace})
        assert response.status_code == 202 and response.json()["status"] == "deleting"
        assert client.delete("/documents/absent", params={"namespace": namespace}).status_code == 404
    pipeline.wait_for(["tides"], namespace, states=("deleted",))
    with pipeline.vector_store() as store:
        assert store.count(namespace, "tides") == 0
        assert store.count(namespace, "jazz") == 1


def _chunk_counts(pipeline: Pipeline, namespace: str, statuses: dict[str, dict[str, Any]]) -> None:
    """Every document indexed exactly once: its chunk count in the index equals what the pipeline made."""
    with pipeline.vector_store() as store:
        for document_id, status in statuses.items():
            assert store.count(namespace, document_id) == status["chunks"], document_id
        assert store.count(namespace) == sum(s["chunks"] for s in statuses.values())
        probe = [0.0] * 384
        probe[0] = 1.0
        found = store.search(namespace, probe, 1000)
    assert len({h.chunk_id for h in found}) == len(found) == sum(s["chunks"] for s in statuses.values())


async def _replay(bootstrap: str, topic: str, namespace: str) -> int:
    """Produce again every message of `topic` about `namespace`: same key, value and headers."""
    return await produce(bootstrap, topic, await read_topic(bootstrap, topic, f"{namespace}/".encode()))


def test_redelivered_events_leave_every_document_indexed_once(pipeline: Pipeline) -> None:
    namespace = _namespace()
    ids = [f"doc-{i}" for i in range(6)]
    for i, document_id in enumerate(ids):
        pipeline.ingest(_long_text(TOPICS[i % len(TOPICS)], 20 + 10 * i), namespace, document_id)
    statuses = pipeline.wait_for(ids, namespace)
    bootstrap = pipeline.kafka.bootstrap_servers
    assert asyncio.run(_replay(bootstrap, pipeline.kafka.documents_topic, namespace)) == len(ids)
    assert asyncio.run(_replay(bootstrap, pipeline.kafka.chunks_topic, namespace)) >= len(ids)
    pipeline.wait_drained()
    settled = ("status", "chunks", "ingest_id", "content_hash")
    after = pipeline.wait_for(ids, namespace)
    assert {d: [s[k] for k in settled] for d, s in after.items()} == {
        d: [s[k] for k in settled] for d, s in statuses.items()
    }, "a replay re-applies the same version: same state, same chunks"
    _chunk_counts(pipeline, namespace, statuses)


def test_killing_the_embedding_worker_mid_batch_loses_and_duplicates_nothing(pipeline: Pipeline) -> None:
    namespace = _namespace()
    ids = [f"doc-{i}" for i in range(24)]
    for i, document_id in enumerate(ids):
        pipeline.ingest(_long_text(f"{TOPICS[i % len(TOPICS)]} (part {i})", 40), namespace, document_id)
    worker = pipeline.component("embedding-worker")
    metrics = f"http://127.0.0.1:{pipeline.services.ports.embedding_metrics}/metrics"
    wait_until(
        lambda: value(httpx.get(metrics).text, "ragtrace_worker_messages_in_flight") > 0,
        interval_s=0.02,
        what="the embedding worker to start on the batch",
    )
    pid = pipeline.supervisor.pid(worker.name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    done = sum(pipeline.status(d, namespace)["status"] == "indexed" for d in ids)
    assert done < len(ids), "the worker must be killed before it finished the batch"
    pipeline.supervisor.start(worker)
    statuses = pipeline.wait_for(ids, namespace, timeout_s=120)
    pipeline.wait_drained()
    _chunk_counts(pipeline, namespace, statuses)


async def _dead_letters(bootstrap: str, topic: str, key: bytes) -> list[RawRecord]:
    return [r for r in await read_topic(bootstrap, topic, key) if r.key == key]


def test_a_poison_message_is_dead_lettered_and_later_documents_are_indexed(faiss_pipeline: Pipeline) -> None:
    namespace = _namespace()
    bootstrap = faiss_pipeline.kafka.bootstrap_servers
    key = f"{namespace}/poison".encode()

    poison = RawRecord(b"\x00not a document event", key)
    asyncio.run(produce(bootstrap, faiss_pipeline.kafka.documents_topic, [poison]))
    faiss_pipeline.ingest("Glaciers carve valleys over millennia.", namespace, "after-poison")
    assert faiss_pipeline.wait_for(["after-poison"], namespace)["after-poison"]["chunks"] == 1
    dead_letter_topic = faiss_pipeline.kafka.dead_letter_topic(faiss_pipeline.kafka.documents_topic)
    letters = wait_until(
        lambda: asyncio.run(_dead_letters(bootstrap, dead_letter_topic, key)),
        what="the poison message in the dead-letter topic",
    )
    headers = dict(letters[0].headers)
    assert letters[0].value == b"\x00not a document event"
    assert headers["ragtrace.error.type"] == b"PoisonMessage"
    assert headers["ragtrace.source.topic"] == faiss_pipeline.kafka.documents_topic.encode()
    assert b"not a document event" in headers["ragtrace.error.message"]


# Bad input ------------------------------------------------------------------------------------------------

PDF_BROKEN = b"%PDF-1.7\n this is not really a PDF \n%%EOF"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"text": "   \n\t", "metadata": {"title": "t"}}, 422, "text"),
        ({"text": "ok", "metadata": {}}, 422, "metadata.title"),
        ({"text": "ok", "metadata": {"title": "  "}}, 422, "metadata.title"),
        ({"text": "ok", "metadata": {"title": "t"}, "namespace": "Bad_NS"}, 422, "namespace"),
        ({"text": "ok", "metadata": {"title": "t"}, "namespace": "-leading"}, 422, "namespace"),
        ({"text": "ok", "metadata": {"title": "t"}, "document_id": "has space"}, 422, "document_id"),
        ({"text": "ok", "metadata": {"title": "t"}, "document_id": "x" * 129}, 422, "document_id"),
        ({"metadata": {"title": "t"}}, 422, "text"),
    ],
    ids=[
        "blank-text",
        "missing-title",
        "blank-title",
        "uppercase-namespace",
        "dash-namespace",
        "bad-id",
        "long-id",
        "no-text",
    ],
)
def test_invalid_documents_get_a_422_that_names_the_field(
    faiss_pipeline: Pipeline, body: dict[str, Any], status: int, fragment: str
) -> None:
    with faiss_pipeline.http() as client:
        response = client.post("/ingest", json=body)
    assert response.status_code == status
    assert response.json()["error"] == "invalid_request"
    assert fragment in response.json()["message"]


def test_malformed_json_gets_a_422(faiss_pipeline: Pipeline) -> None:
    with faiss_pipeline.http(**{"content-type": "application/json"}) as client:
        response = client.post("/ingest", content=b'{"text": "unterminated')
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["message"]


def test_a_body_over_the_limit_gets_a_413_while_streaming(faiss_pipeline: Pipeline) -> None:
    oversized = b'{"text": "' + b"a" * (10 * 1024 * 1024 + 10) + b'", "metadata": {"title": "t"}}'

    def chunks() -> Any:
        for start in range(0, len(oversized), 1 << 20):
            yield oversized[start : start + (1 << 20)]

    with faiss_pipeline.http(**{"content-type": "application/json"}) as client:
        declared = client.post("/ingest", content=oversized)
        streamed = client.post("/ingest", content=chunks())  # chunked: no Content-Length to trust
    for response in (declared, streamed):
        assert response.status_code == 413
        assert "larger than the limit" in response.json()["message"]


def test_an_unknown_or_missing_api_key_gets_a_401(faiss_pipeline: Pipeline) -> None:
    body = {"text": "ok", "metadata": {"title": "t"}}
    assert httpx.post(f"{faiss_pipeline.base_url}/ingest", json=body).status_code == 401
    wrong = httpx.post(f"{faiss_pipeline.base_url}/ingest", json=body, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["message"]


def test_file_uploads_extract_text_or_say_why_not(faiss_pipeline: Pipeline) -> None:
    namespace = _namespace()
    html = (
        b"<html><head><title>Volcano notes</title><style>p{}</style></head><body><p>Lava is molten rock.</p>"
        b"<script>alert(1)</script></body></html>"
    )
    with faiss_pipeline.http() as client:
        accepted = client.post(
            "/ingest/file",
            data={"namespace": namespace, "document_id": "volcano"},
            files={"file": ("notes.html", io.BytesIO(html), "text/html")},
        )
        markdown = client.post(
            "/ingest/file",
            data={"namespace": namespace, "metadata": '{"lang": "en"}'},
            files={"file": ("readme.md", io.BytesIO(b"# Tides\nThe moon pulls the sea."))},
        )
        unsupported = client.post(
            "/ingest/file", data={"namespace": namespace}, files={"file": ("slides.pptx", io.BytesIO(b"PK\x03\x04"))}
        )
        broken_pdf = client.post(
            "/ingest/file",
            data={"namespace": namespace},
            files={"file": ("paper.pdf", io.BytesIO(PDF_BROKEN), "application/pdf")},
        )
    assert accepted.status_code == 202, accepted.text
    assert markdown.status_code == 202, markdown.text
    assert unsupported.status_code == 415 and ".pdf" in unsupported.json()["message"]
    assert broken_pdf.status_code == 422 and "PDF" in broken_pdf.json()["message"]
    faiss_pipeline.wait_for(["volcano"], namespace)
    with faiss_pipeline.vector_store() as store:
        hits = store.search(namespace, [1.0] + [0.0] * 383, 10)
    volcano = next(h for h in hits if h.document_id == "volcano")
    assert volcano.content == "Lava is molten rock."
    assert volcano.metadata["title"] == "Volcano notes"


def test_a_pdf_upload_is_indexed_with_its_text(faiss_pipeline: Pipeline) -> None:
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=300, height=100)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    content = DecodedStreamObject()
    content.set_data(b"BT /F1 12 Tf 10 50 Td (Basalt columns cool slowly.) Tj ET")
    page[NameObject("/Contents")] = writer._add_object(content)
    buffer = io.BytesIO()
    writer.write(buffer)
    namespace = _namespace()
    with faiss_pipeline.http() as client:
        response = client.post(
            "/ingest/file",
            data={"namespace": namespace, "document_id": "basalt"},
            files={"file": ("basalt.pdf", io.BytesIO(buffer.getvalue()), "application/pdf")},
        )
    assert response.status_code == 202, response.text
    faiss_pipeline.wait_for(["basalt"], namespace)
    with faiss_pipeline.vector_store() as store:
        [hit] = store.search(namespace, [1.0] + [0.0] * 383, 5)
    assert "Basalt columns cool slowly." in hit.content
    assert hit.metadata["title"] == "basalt"
