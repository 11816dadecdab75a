"""A running ingestion pipeline for the tests: the real ingest API and workers as separate processes, on the
session's real servers, with topics, groups, bucket and collection of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from httpx_sse import EventSource
from minio import Minio
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from ragtrace.clients import minio_client
from ragtrace.ingest_client import Document, IngestClient, NotSettled
from ragtrace.settings import KafkaSettings
from ragtrace.vectorstore import Backend, VectorStoreSettings, open_vector_store
from ragtrace.vectorstore.generations import GenerationalStore
from ragtrace_tools.devstack.observability import ObservabilityPorts
from ragtrace_tools.devstack.services import ServicePorts, Services
from ragtrace_tools.devstack.supervisor import Component, Supervisor
from ragtrace_tools.kafka_admin import group_lag
from tests.infra import Infra, _environment

# The tests give each dependency a deadline of 1 s (RAGTRACE_MINIO_TIMEOUT_S, RAGTRACE_QUERY_EMBEDDING_TIMEOUT_S,
# a client's timeout). A fast 503 comes at that one deadline: on a busy 2-core CI machine the answer trails it
# (CI saw 1.52 s and 1.73 s), while a retried wait would take two deadlines, 2 s at least.
ONE_DEADLINE_S = 1.95

T = TypeVar("T")

API_KEY = "test-" + uuid.uuid4().hex
TENANT_KEY = "tenant-" + uuid.uuid4().hex  # may use namespace "tenant-a" only
LLM_API_KEY = "llm-" + uuid.uuid4().hex


def wait_until(condition: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.1, what: str = "") -> Any:
    """Poll until `condition()` is truthy; return its value. Tests never sleep a fixed time."""
    try:
        return Retrying(
            retry=retry_if_result(lambda value: not value),
            stop=stop_after_delay(timeout_s),
            wait=wait_fixed(interval_s),
        )(condition)
    except RetryError:
        raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what or condition}") from None


def server_sent_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event, data) of the gateway's `/api/search/stream` answer, in order."""
    for event in EventSource(response).iter_sse():
        yield event.event, event.json()


def session_server(infra: Infra, name: str) -> tuple[Supervisor, Component]:
    """The session's own server `name`, to stop and start; the test is skipped where the servers are not ours."""
    if infra.stack is None:
        pytest.skip(f"{name} was not started by this test session, so it is not ours to stop")
    return infra.stack.supervisor, next(c for c in infra.stack.components() if c.name == name)


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process is stopped (SIGSTOP: a hung disk or network) inside the block, and continues after it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def timed(call: Callable[[], T]) -> tuple[T, float]:
    """The call's result and how many seconds it took."""
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


@dataclass
class Pipeline:
    backend: Backend
    infra: Infra
    services: Services
    supervisor: Supervisor
    env: dict[str, str]
    kafka: KafkaSettings

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.services.ports.ingest}"

    @property
    def search_url(self) -> str:
        return f"http://127.0.0.1:{self.services.ports.gateway}"

    def search(self, key: str = API_KEY, **body: Any) -> httpx.Response:
        return httpx.post(f"{self.search_url}/api/search", json=body, headers={"X-API-Key": key}, timeout=30)

    def http(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": API_KEY, **headers}, timeout=30)

    def documents(self) -> IngestClient:
        return IngestClient(self.base_url, API_KEY)

    def ingest(
        self, text: str, namespace: str, document_id: str | None = None, title: str = "t", **metadata: Any
    ) -> dict[str, Any]:
        with self.documents() as client:
            return client.ingest(namespace, Document(text, title, document_id, metadata))

    def status(self, document_id: str, namespace: str) -> dict[str, Any]:
        with self.documents() as client:
            return client.status(namespace, document_id)

    def wait_for(
        self, document_ids: Iterable[str], namespace: str, states: Iterable[str] = ("indexed",), timeout_s: float = 90.0
    ) -> dict[str, dict[str, Any]]:
        """Until every document is in one of `states`; their statuses. Tests never sleep a fixed time."""
        with self.documents() as client:
            try:
                return client.wait_until_settled(namespace, document_ids, states=set(states), timeout_s=timeout_s)
            except NotSettled as error:
                raise AssertionError(str(error)) from None

    @contextlib.contextmanager
    def vector_store(self) -> Iterator[GenerationalStore]:
        with _environment(self.env):
            store = open_vector_store(VectorStoreSettings(), self.infra.weaviate)
        try:
            yield store
        finally:
            store.close()

    @property
    def inbox_bucket(self) -> str:
        """The bucket this pipeline's inbox worker watches (its objects become documents)."""
        return self.env["RAGTRACE_INBOX_BUCKET"]

    def minio(self) -> Minio:
        return minio_client(self.infra.minio)

    def component(self, name: str) -> Component:
        return next(c for c in self.services.components() if c.name == name)

    def wait_drained(self, timeout_s: float = 60.0, topics: Iterable[str] | None = None) -> None:
        """Until the consumer groups of `topics` (default: both workers') have committed everything written to
        their topics."""
        groups = {
            self.kafka.inbox_topic: self.kafka.group_prefix + "inbox",
            self.kafka.documents_topic: self.kafka.group_prefix + "embedding",
            self.kafka.chunks_topic: self.kafka.group_prefix + "indexer",
        }
        wanted = set(topics or (self.kafka.documents_topic, self.kafka.chunks_topic))
        groups = {topic: group for topic, group in groups.items() if topic in wanted}
        wait_until(
            lambda: asyncio.run(group_lag(self.kafka.bootstrap_servers, groups)) == 0,
            timeout_s,
            0.3,
            "the consumer groups to catch up",
        )


@contextlib.contextmanager
def start_pipeline(
    infra: Infra, state_dir: Path, backend: Backend, observability: ObservabilityPorts, llm_url: str
) -> Iterator[Pipeline]:
    """Ingestion (API, workers) and query (embedding service, search service, gateway) for one backend, exporting
    their spans to the session's collector (and reading traces back from its Tempo)."""
    suffix = uuid.uuid4().hex[:8]
    env = {
        **infra.env,
        "RAGTRACE_API_KEYS": json.dumps({API_KEY: ["*"], TENANT_KEY: ["tenant-a"]}),
        "RAGTRACE_LLM_BASE_URL": llm_url,
        "RAGTRACE_LLM_API_KEY": LLM_API_KEY,
        "RAGTRACE_KAFKA_DOCUMENTS_TOPIC": f"t{suffix}.documents",
        "RAGTRACE_KAFKA_CHUNKS_TOPIC": f"t{suffix}.chunks",
        "RAGTRACE_KAFKA_GROUP_PREFIX": f"g{suffix}-",
        "RAGTRACE_KAFKA_PARTITIONS": "3",
        "RAGTRACE_MINIO_BUCKET": f"documents-{suffix}",
        "RAGTRACE_INBOX_BUCKET": f"inbox-{suffix}",
        "RAGTRACE_INDEX_BACKEND": backend.value,
        "RAGTRACE_INDEX_DATA_DIR": str(state_dir / "index"),
        "RAGTRACE_INDEX_WEAVIATE_COLLECTION": f"Chunks{suffix}",
        "RAGTRACE_INDEXER_MAX_BATCH": "64",
        "OTEL_EXPORTER_OTLP_ENDPOINT": observability.otlp_endpoint,
        "RAGTRACE_TRACE_QUERY_URL": observability.tempo_url,
    }
    services = Services(state_dir, ServicePorts.free(), env)
    supervisor = Supervisor(state_dir)
    with _environment(env):
        kafka = KafkaSettings()
    ingestion = services.ingestion()
    if not infra.notifies_kafka:
        ingestion = [c for c in ingestion if c.name != "inbox-worker"]
    with supervisor.running([*ingestion, *services.query()]):
        yield Pipeline(backend, infra, services, supervisor, {**services.env}, kafka)
