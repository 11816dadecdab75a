"""POST /namespaces/{namespace}/reindex: a namespace rebuilt into a new generation of its index from what MinIO
stores, while it is searched, written to and its processes crash, against real servers (docs/reindex.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from ragtrace.ingest_client import IngestError
from ragtrace.vectorstore.generations import Generations
from tests.metrics import value
from tests.pipeline import Pipeline, wait_until

TOPICS = ["thermometers", "volcanoes", "bread baking", "tidal energy", "honeybees", "glaciers", "jazz harmony"]


def _namespace() -> str:
    return "rx-" + uuid.uuid4().hex[:10]


def _text(topic: str, sentences: int) -> str:
    return " ".join(f"Sentence {i} about {topic}: facts and a little history of {topic}." for i in range(sentences))


def _ingest_all(pipeline: Pipeline, namespace: str, count: int, sentences: int = 20) -> list[str]:
    ids = [f"doc-{i}" for i in range(count)]
    for i, document_id in enumerate(ids):
        pipeline.ingest(_text(f"{TOPICS[i % len(TOPICS)]} (part {i})", sentences + i), namespace, document_id)
    pipeline.wait_for(ids, namespace)
    return ids


def _progress(pipeline: Pipeline, namespace: str) -> dict[str, Any]:
    with pipeline.documents() as client:
        return client.reindex_progress(namespace)


def _finished(pipeline: Pipeline, namespace: str, timeout_s: float = 180.0) -> dict[str, Any]:
    progress: dict[str, Any] = wait_until(
        lambda: (p := _progress(pipeline, namespace))["state"] != "running" and p,
        timeout_s,
        0.2,
        f"the re-index of {namespace} to finish",
    )
    return progress


@contextlib.contextmanager
def _searching(pipeline: Pipeline, namespace: str) -> Iterator[list[int]]:
    """Searches of the namespace one after another, each with a new query (no cached answer) until the block
    ends; the status code of each, in order."""
    codes: list[int] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            query = f"facts about {TOPICS[len(codes) % len(TOPICS)]} {uuid.uuid4().hex[:6]}"
            codes.append(pipeline.search(query=query, namespace=namespace, generate=False).status_code)

    thread = threading.Thread(target=search, daemon=True)
    thread.start()
    try:
        yield codes
    finally:
        stop.set()
        thread.join()


def _assert_serves_exactly(pipeline: Pipeline, namespace: str, generation: int, ids: set[str]) -> None:
    """The namespace is served from `generation`, which holds each of `ids` once, with the chunks its record
    names, and nothing else; the generations before it are gone."""
    statuses = pipeline.wait_for(ids, namespace)
    with pipeline.vector_store() as store:
        assert store.generations(namespace) == Generations(serving=generation)
        assert store.document_ids(namespace, generation) == ids
        assert {d: store.count(namespace, d) for d in ids} == {d: s["chunks"] for d, s in statuses.items()}
        assert all(not store.document_ids(namespace, g) for g in range(generation)), "old generations dropped"


def test_a_reindex_switches_under_searches_with_writes_meanwhile(pipeline: Pipeline) -> None:
    namespace = _namespace()
    ids = _ingest_all(pipeline, namespace, 12)
    embedding = pipeline.component("embedding-worker")
    with _searching(pipeline, namespace) as codes:
        # The embedding worker is stopped while the re-index starts and documents change, so that all of it is
        # in flight together once it is back.
        with pipeline.supervisor.stopped(embedding), pipeline.documents() as client:
            started = client.reindex(namespace)
            assert (started["state"], started["total"], started["generation"]) == ("running", len(ids), 1)
            try:
                client.reindex(namespace)
                raise AssertionError("a second re-index of a namespace while one runs must be refused")
            except IngestError as error:
                assert error.status_code == 409 and "is running" in str(error)
            pipeline.ingest(_text("comets", 30), namespace, "added")
            pipeline.ingest(_text("sourdough starters", 25), namespace, "doc-0")  # a new version
            with pipeline.http() as http:
                assert http.delete("/documents/doc-1", params={"namespace": namespace}).status_code == 202
            assert _progress(pipeline, namespace)["state"] == "running"
        progress = _finished(pipeline, namespace)
        searched_before_switch = len(codes)
        wait_until(lambda: len(codes) > searched_before_switch + 5, what="searches after the switch")
    assert progress["state"] == "done" and progress["failed"] == {}, progress
    assert progress["done"] + progress["gone"] == progress["total"] == len(ids)
    assert progress["gone"] == 1, "doc-1 was deleted meanwhile"
    assert codes.count(200) == len(codes) > 0, f"failed searches: {[c for c in codes if c != 200]}"
    pipeline.wait_for(["doc-1"], namespace, states=("deleted",))
    _assert_serves_exactly(pipeline, namespace, 1, set(ids) - {"doc-1"} | {"added"})
    answer = pipeline.search(query="sourdough starters", namespace=namespace, generate=False, mode="keyword")
    assert answer.status_code == 200 and "doc-0" in answer.text, "the new version is what the new generation holds"

    with pipeline.documents() as client:  # and again: the next generation
        assert client.reindex(namespace)["generation"] == 2
    assert _finished(pipeline, namespace)["state"] == "done"
    _assert_serves_exactly(pipeline, namespace, 2, set(ids) - {"doc-1"} | {"added"})


def test_a_reindex_of_an_unknown_namespace_is_a_404_that_says_so(faiss_pipeline: Pipeline) -> None:
    namespace = _namespace()
    with faiss_pipeline.http() as http:
        started = http.post(f"/namespaces/{namespace}/reindex")
        progress = http.get(f"/namespaces/{namespace}/reindex")
    assert started.status_code == 404 and "has no documents to re-index" in started.json()["message"]
    assert progress.status_code == 404 and "no re-index" in progress.json()["message"]


def test_a_reindex_resumes_after_its_processes_are_killed_and_loses_nothing(pipeline: Pipeline) -> None:
    namespace = _namespace()
    ids = _ingest_all(pipeline, namespace, 24, sentences=40)
    ingest, embedding = pipeline.component("ingest-api"), pipeline.component("embedding-worker")
    with pipeline.supervisor.stopped(embedding):
        with pipeline.documents() as client:
            client.reindex(namespace)
        # Killed while it publishes the job's events, or just after: the events it did not publish are
        # published again when it is back.
        _kill(pipeline, ingest.name)
        pipeline.supervisor.start(ingest)
    metrics = f"http://127.0.0.1:{pipeline.services.ports.embedding_metrics}/metrics"
    wait_until(
        lambda: value(httpx.get(metrics).text, "ragtrace_worker_messages_in_flight") > 0,
        interval_s=0.02,
        what="the embedding worker to start on the re-index events",
    )
    _kill(pipeline, embedding.name)
    killed_at = _progress(pipeline, namespace)
    assert killed_at["state"] == "running" and killed_at["done"] < len(ids), "killed before the job was over"
    pipeline.supervisor.start(embedding)
    progress = _finished(pipeline, namespace)
    assert (progress["state"], progress["done"], progress["failed"]) == ("done", len(ids), {}), progress
    _assert_serves_exactly(pipeline, namespace, 1, set(ids))
    assert {s["status"] for s in pipeline.wait_for(ids, namespace).values()} == {"indexed"}, "records untouched"


def _kill(pipeline: Pipeline, name: str) -> None:
    """SIGKILL the component's process, and wait until it is gone (a signal is delivered asynchronously)."""
    pid = pipeline.supervisor.pid(name)
    assert pid is not None, f"{name} is not running"
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: pipeline.supervisor.pid(name) is None, what=f"{name} to die")
