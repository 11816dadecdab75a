"""Bulk ingestion against the real pipeline: POST /ingest/batch (good and bad documents together, a Kafka
outage) and `ragtrace ingest` on a folder (progress, failures named, an idempotent rerun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.infra import Infra
from tests.pipeline import API_KEY, Pipeline, session_server, timed


def _namespace() -> str:
    return "bulk-" + uuid.uuid4().hex[:8]


def _item(document_id: str, text: str, **fields: Any) -> dict[str, Any]:
    return {"document_id": document_id, "text": text, "metadata": {"title": document_id}, **fields}


def _post_batch(pipeline: Pipeline, namespace: str, documents: list[Any]) -> httpx.Response:
    body = json.dumps({"namespace": namespace, "documents": documents})  # ASCII: lone surrogates stay escaped
    with pipeline.http(**{"content-type": "application/json"}) as client:
        return client.post("/ingest/batch", content=body)


def test_a_batch_indexes_its_good_documents_and_names_each_bad_one(pipeline: Pipeline) -> None:
    namespace = _namespace()
    documents = [
        _item("glacier", "Glaciers carve U-shaped valleys."),
        _item("empty", ""),
        _item("surrogate", "text \ud800 with a lone surrogate"),
        _item("bad id", "An id with a space."),
        _item("volcano", "Volcanoes erupt molten rock."),
        {"text": "No title at all."},
    ]
    response = _post_batch(pipeline, namespace, documents)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (2, 4)
    errors = {r["index"]: r["error"]["field"] for r in answer["results"] if r.get("error")}
    assert errors == {
        1: "documents[1].text",
        2: "documents[2].text",
        3: "documents[3].document_id",
        5: "documents[5].metadata",
    }
    accepted = {r["document_id"]: r for r in answer["results"] if not r.get("error")}
    assert set(accepted) == {"glacier", "volcano"}
    assert accepted["glacier"]["trace_id"] != accepted["volcano"]["trace_id"], "each document has its own trace"

    statuses = pipeline.wait_for(list(accepted), namespace)
    for document_id, status in statuses.items():
        assert status["trace_id"] == accepted[document_id]["trace_id"]
        assert status["content_hash"] == accepted[document_id]["content_hash"]
    with pipeline.vector_store() as store:
        assert store.count(namespace, "glacier") == 1 and store.count(namespace, "volcano") == 1
        assert store.count(namespace, "empty") == 0

    again = _post_batch(pipeline, namespace, [documents[0], documents[4]])
    assert [r["status"] for r in again.json()["results"]] == ["indexed", "indexed"], "settled content: no new work"


def test_a_batch_as_ndjson_and_many_statuses_at_once(faiss_pipeline: Pipeline) -> None:
    namespace = _namespace()
    lines = "\n".join(json.dumps(_item(f"line-{i}", f"Line {i} is about tides and the moon.")) for i in range(3))
    with faiss_pipeline.http(**{"content-type": "application/x-ndjson"}) as client:
        response = client.post("/ingest/batch", params={"namespace": namespace}, content=lines + "\n")
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 3
    faiss_pipeline.wait_for([f"line-{i}" for i in range(3)], namespace)
    with faiss_pipeline.http() as client:
        statuses = client.post(
            "/ingest/status", json={"namespace": namespace, "document_ids": ["line-0", "line-2", "absent"]}
        ).json()["documents"]
    assert statuses["line-0"]["status"] == "indexed" and statuses["line-2"]["status"] == "indexed"
    assert statuses["absent"] is None


def test_a_batch_during_a_kafka_outage_is_a_503_and_nothing_is_half_announced(
    faiss_pipeline: Pipeline, infra: Infra
) -> None:
    supervisor, kafka = session_server(infra, "kafka")
    namespace = _namespace()
    documents = [_item(f"outage-{i}", f"Document {i} about lighthouses in fog.") for i in range(4)]
    with supervisor.stopped(kafka):
        response, elapsed = timed(lambda: _post_batch(faiss_pipeline, namespace, documents))
        during = {d["document_id"]: faiss_pipeline.status(d["document_id"], namespace) for d in documents}
    assert response.status_code == 503, response.text
    assert response.json()["dependency"] == "kafka" and "kafka" in response.json()["message"]
    assert elapsed < 2.0, f"503 took {elapsed:.2f}s"
    assert all(s["status"] == "failed" and "not accepted" in s["error"] for s in during.values()), during

    faiss_pipeline.wait_drained(timeout_s=120)
    with faiss_pipeline.vector_store() as store:
        assert all(store.count(namespace, d["document_id"]) == 0 for d in documents), "given back: never indexed"
    retried = _post_batch(faiss_pipeline, namespace, documents)
    assert retried.status_code == 202 and retried.json()["accepted"] == len(documents), retried.text
    statuses = faiss_pipeline.wait_for([d["document_id"] for d in documents], namespace, timeout_s=120)
    assert all(s["chunks"] == 1 for s in statuses.values())


def _ragtrace_ingest(pipeline: Pipeline, namespace: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAGTRACE_API_KEY": API_KEY, "RAGTRACE_INGEST_URL": pipeline.base_url, "COLUMNS": "200"}
    command = [str(Path(sys.executable).parent / "ragtrace"), "ingest", *map(str, paths), "--namespace", namespace]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_ragtrace_ingest_sends_a_folder_names_failures_and_resends_nothing_unchanged(
    faiss_pipeline: Pipeline, tmp_path: Path
) -> None:
    namespace = _namespace()
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "tides.txt").write_text("The moon pulls the sea into tides.")
    (folder / "sub" / "lava.md").write_text("# Lava\nMolten rock cools into basalt.")
    (folder / "page.html").write_text("<html><head><title>Wind</title></head><body><p>Wind moves air.</p></body>")
    (folder / "lines.jsonl").write_text(
        json.dumps({"text": "Rivers carve canyons.", "metadata": {"title": "Rivers"}})
        + "\n"
        + json.dumps({"text": "Deltas form at river mouths.", "title": "Deltas"})
        + "\n"
    )
    (folder / "notes.bin").write_bytes(b"\x00ignored: not a supported type")
    (folder / "broken.txt").write_bytes(b"caf\xe9 is not UTF-8")
    ids = ["tides.txt", "sub:lava.md", "page.html", "lines.jsonl:1", "lines.jsonl:2"]

    first = _ragtrace_ingest(faiss_pipeline, namespace, folder)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "broken.txt" in first.stdout and "not UTF-8" in first.stdout
    assert "notes.bin" not in first.stdout
    statuses = faiss_pipeline.wait_for(ids, namespace)
    assert statuses["page.html"]["status"] == "indexed"

    (folder / "broken.txt").unlink()
    second = _ragtrace_ingest(faiss_pipeline, namespace, folder)
    assert second.returncode == 0, second.stdout + second.stderr
    assert _row(second.stdout, "unchanged (not sent)") == 5 and _row(second.stdout, "sent and accepted") == 0
    after = {d: faiss_pipeline.status(d, namespace) for d in ids}
    assert all(after[d]["ingest_id"] == statuses[d]["ingest_id"] for d in ids), "nothing was sent again"

    (folder / "tides.txt").write_text("The moon and the sun pull the sea into tides.")
    third = _ragtrace_ingest(faiss_pipeline, namespace, folder)
    assert third.returncode == 0, third.stdout + third.stderr
    assert _row(third.stdout, "sent and accepted") == 1 and _row(third.stdout, "indexed") == 1
    assert faiss_pipeline.status("tides.txt", namespace)["ingest_id"] != statuses["tides.txt"]["ingest_id"]


def _row(output: str, name: str) -> int:
    """A count from the summary table `ragtrace ingest` prints."""
    line = next(line for line in output.splitlines() if line.startswith(f"│ {name} "))
    return int(line.split("│")[2].strip())
