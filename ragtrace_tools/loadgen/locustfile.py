"""Locust users for `ragtrace load-gen`: ingests of the bundled corpus and searches in all three modes.

Run by ragtrace_tools/loadgen/__init__.py in its own process (Locust patches the standard library with gevent);
everything it needs comes in RAGTRACE_LOADGEN_* variables. The documents it ingested are written to
RAGTRACE_LOADGEN_DOCUMENTS at the end, for the freshness measurement.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

from ragtrace.ingest_client import Document, IngestClient

INGEST_URL = os.environ["RAGTRACE_LOADGEN_INGEST_URL"].rstrip("/")
SEARCH_URL = os.environ["RAGTRACE_LOADGEN_SEARCH_URL"].rstrip("/")
API_KEY = os.environ["RAGTRACE_LOADGEN_API_KEY"]
NAMESPACE = os.environ["RAGTRACE_LOADGEN_NAMESPACE"]
DOCUMENTS_FILE = Path(os.environ["RAGTRACE_LOADGEN_DOCUMENTS"])
GENERATE = os.environ.get("RAGTRACE_LOADGEN_GENERATE") == "1"
INGEST_WEIGHT = int(os.environ.get("RAGTRACE_LOADGEN_INGEST_WEIGHT", "1"))
SEARCH_WEIGHT = int(os.environ.get("RAGTRACE_LOADGEN_SEARCH_WEIGHT", "4"))
MODES = ("vector", "keyword", "hybrid")

_here = Path(__file__).parent
CORPUS = [json.loads(line) for line in (_here / "corpus.jsonl").read_text().splitlines() if line.strip()]
SEED_DOCUMENTS = len(CORPUS)
QUERIES = [line for line in (_here / "queries.txt").read_text().splitlines() if line.strip()]
_numbers = itertools.count()
_modes = itertools.cycle(MODES)  # in turn, so even a short run measures every mode
ingested: list[str] = []


def _document(number: int, document_id: str) -> Document:
    """The corpus cycled; each copy is distinct content, so it is indexed rather than reported duplicate."""
    passage = CORPUS[number % len(CORPUS)]
    return Document(f"{passage['text']} (load-test copy {number})", passage["title"], document_id)


@events.test_start.add_listener  # type: ignore[untyped-decorator]  # locust's events are untyped
def seed(**_: Any) -> None:
    """The corpus indexed once before the clock starts, so every search has passages to find. Through the
    ingest client, not Locust's: the seeding is not part of the measured load."""
    seeds = (_document(i, f"seed-{i}") for i in range(SEED_DOCUMENTS))
    with IngestClient(INGEST_URL, API_KEY, timeout=10) as client:
        statuses = client.ingest_and_wait(NAMESPACE, seeds, timeout_s=120)
    not_indexed = {d: (s["status"], s.get("error")) for d, s in statuses.items() if s["status"] != "indexed"}
    if not_indexed:
        raise RuntimeError(f"seed documents not indexed: {not_indexed}")


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def record_documents(**_: Any) -> None:
    DOCUMENTS_FILE.write_text(json.dumps(ingested))


class RagUser(HttpUser):
    """One user: ingests now and then, searches more often (weights from the command line)."""

    host = INGEST_URL
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.client.headers["X-API-Key"] = API_KEY

    @task(INGEST_WEIGHT)
    def ingest(self) -> None:
        number = next(_numbers) + SEED_DOCUMENTS
        document_id = f"load-{number}"
        body = _document(number, document_id).body(NAMESPACE)
        with self.client.post("/ingest", json=body, name="POST /ingest", catch_response=True) as response:
            if response.status_code == 202:
                ingested.append(document_id)
            else:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(SEARCH_WEIGHT)
    def search(self) -> None:
        mode, query = next(_modes), random.choice(QUERIES)  # noqa: S311  # a load mix, not a secret
        body = {"query": query, "namespace": NAMESPACE, "mode": mode, "generate": GENERATE}
        with self.client.post(
            f"{SEARCH_URL}/api/search", json=body, name=f"POST /api/search [{mode}]", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif mode != "keyword" and not response.json().get("sources"):  # keyword: no shared term, no hit
                response.failure("no sources from a namespace with documents")
