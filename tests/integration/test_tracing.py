"""One trace follows a document from POST /ingest through every process, and one a question: each read back
from the real Tempo the session's collector exports to (by trace id, and found again with TraceQL)."""

from __future__ import annotations

import json
import uuid

from typer.testing import CliRunner, Result

from ragtrace.tempo import SpanView
from ragtrace_tools.cli import app
from ragtrace_tools.devstack.observability import Observability
from tests.pipeline import Pipeline, wait_until
from tests.traces import path_to_root, searchable_document_traces, whole_tree

AIOKAFKA_SCOPE = "opentelemetry.instrumentation.aiokafka"


def test_one_trace_follows_a_document_through_every_process(
    faiss_pipeline: Pipeline, observability: Observability
) -> None:
    namespace = "trace-" + uuid.uuid4().hex[:8]
    accepted = faiss_pipeline.ingest("Seismographs record the motion of the ground.", namespace, "seismo")
    faiss_pipeline.wait_for(["seismo"], namespace)
    kafka = faiss_pipeline.kafka

    wanted = {("ingest-api", "POST /ingest"), ("indexer-worker", "index write")}
    spans: list[SpanView] = wait_until(
        lambda: whole_tree(observability.tempo_url, accepted["trace_id"], wanted),
        30,
        0.3,
        "the document's whole trace in Tempo",
    )
    by_id = {s.span_id: s for s in spans}

    assert {s.trace_id for s in spans} == {accepted["trace_id"]}
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1, "one tree"
    assert roots[0].service == "ingest-api" and roots[0].kind == "server" and roots[0].name == "POST /ingest"
    assert all(s.parent_span_id in by_id for s in spans if s.parent_span_id), "every parent is in the trace"

    index_write = next(s for s in spans if s.name == "index write" and s.service == "indexer-worker")
    chain = [(s.service, s.name) for s in path_to_root(index_write, by_id)]
    assert chain == [
        ("indexer-worker", "index write"),
        ("indexer-worker", f"process {kafka.chunks_topic}"),
        ("embedding-worker", f"{kafka.chunks_topic} send"),
        ("embedding-worker", f"process {kafka.documents_topic}"),
        ("ingest-api", f"{kafka.documents_topic} send"),
        ("ingest-api", "POST /ingest"),
    ]
    # The messaging spans are opentelemetry-instrumentation-aiokafka's, and only theirs: one send per hop,
    # and the consumer's receive span in the same tree.
    messaging = [s for s in spans if s.scope == AIOKAFKA_SCOPE]
    assert sorted((s.service, s.name) for s in messaging) == sorted(
        [
            ("ingest-api", f"{kafka.documents_topic} send"),
            ("embedding-worker", f"{kafka.documents_topic} receive"),
            ("embedding-worker", f"{kafka.chunks_topic} send"),
            ("indexer-worker", f"{kafka.chunks_topic} receive"),
        ]
    )
    for send in (s for s in messaging if s.name.endswith(" send")):
        assert send.kind == "producer" and by_id[send.parent_span_id].service == send.service
    names = {(s.service, s.name) for s in spans}
    assert {
        ("ingest-api", "upload document"),
        ("embedding-worker", "chunk"),
        ("embedding-worker", "embed"),
    } <= names

    consumer = next(s for s in spans if s.name == f"process {kafka.documents_topic}")
    assert consumer.kind == "consumer"
    assert consumer.attributes["messaging.system"] == "kafka"
    assert consumer.attributes["messaging.destination.name"] == kafka.documents_topic
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.consumer.group.name"] == kafka.group_prefix + "embedding"
    assert "messaging.destination.partition.id" in consumer.attributes
    assert isinstance(consumer.attributes["messaging.kafka.offset"], int)
    assert consumer.attributes["document.id"] == "seismo"
    assert consumer.attributes["ragtrace.namespace"] == namespace
    producer = next(s for s in spans if s.name == f"{kafka.documents_topic} send")
    assert producer.attributes["messaging.destination.name"] == kafka.documents_topic
    assert producer.attributes["messaging.system"] == "kafka"
    embed = next(s for s in spans if s.name == "embed")
    assert embed.attributes["ragtrace.chunk.count"] == 1
    assert embed.attributes["ragtrace.embedding.model"] == "all-MiniLM-L6-v2"
    assert embed.attributes["ragtrace.embedding.dimension"] == 384

    # Found again by TraceQL on the consumer span's attributes, once Tempo has made the trace searchable.
    [found] = wait_until(
        lambda: searchable_document_traces(observability.tempo_url, "seismo", namespace),
        60,
        1,
        "TraceQL to find the whole trace by document.id",
    )
    assert found.trace_id == accepted["trace_id"]
    assert (found.root_service, found.root_name) == ("ingest-api", "POST /ingest")
    assert {"ingest-api", "embedding-worker", "indexer-worker"} <= set(found.services)


def test_one_trace_follows_a_question_through_every_service(
    faiss_pipeline: Pipeline, observability: Observability
) -> None:
    namespace = "trace-" + uuid.uuid4().hex[:8]
    faiss_pipeline.ingest("Seismographs record the motion of the ground.", namespace, "seismo", title="Seismo")
    faiss_pipeline.wait_for(["seismo"], namespace)
    response = faiss_pipeline.search(
        query=f"What do seismographs record? {uuid.uuid4().hex}", namespace=namespace, generate=True
    )
    assert response.status_code == 200, response.text
    trace_id = response.json()["metadata"]["trace_id"]

    wanted = {
        ("search-gateway", "POST /api/search"),
        ("search-service", "chat test-llm"),
        ("embedding-service", "/ragtrace.v1.EmbeddingService/Embed"),
    }
    spans: list[SpanView] = wait_until(
        lambda: whole_tree(observability.tempo_url, trace_id, wanted),
        30,
        0.3,
        "the question's whole trace in Tempo",
    )
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1 and roots[0].service == "search-gateway" and roots[0].name == "POST /api/search"
    orphans = [(s.service, s.name) for s in spans if s.parent_span_id and s.parent_span_id not in by_id]
    assert not orphans, f"one tree: these spans' parents are missing: {orphans}"

    def one(service: str, name: str) -> SpanView:
        return next(s for s in spans if s.service == service and s.name == name)

    grpc_server = one("search-service", "/ragtrace.v1.SearchService/Search")
    assert grpc_server.kind == "server" and by_id[grpc_server.parent_span_id].service == "search-gateway"
    embed = one("search-service", "embed query (grpc)")
    embedding_server = one("embedding-service", "/ragtrace.v1.EmbeddingService/Embed")
    assert path_to_root(embedding_server, by_id)[2] == embed, "Embed server ← gRPC client ← embed query"
    lookup = one("search-service", "cache lookup")
    assert lookup.attributes["ragtrace.cache.hit"] is False
    # A miss reads Redis twice: the namespace's version with the query's embedding (one MGET), then the result.
    assert sorted(s.name for s in spans if s.parent_span_id == lookup.span_id) == ["GET", "MGET"]

    retrieval = one("search-service", "retrieve hybrid")
    assert retrieval.attributes["gen_ai.request.top_k"] == 5
    assert retrieval.attributes["ragtrace.search.results"] == 1
    assert retrieval.attributes["ragtrace.search.score.max"] >= retrieval.attributes["ragtrace.search.score.min"]

    chat = one("search-service", "chat test-llm")
    assert chat.kind == "client"
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.provider.name"] == "vllm"
    assert chat.attributes["gen_ai.request.model"] == "test-llm"
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0 and chat.attributes["gen_ai.usage.output_tokens"] > 0
    assert chat.attributes["ragtrace.llm.time_to_first_chunk_ms"] > 0
    assert path_to_root(chat, by_id)[-1] == roots[0]


def test_ragtrace_trace_shows_the_tree_and_logs_carry_the_trace_id(
    faiss_pipeline: Pipeline, observability: Observability
) -> None:
    namespace = "cli-" + uuid.uuid4().hex[:8]
    accepted = faiss_pipeline.ingest("Barometers measure air pressure.", namespace, "barometer")
    faiss_pipeline.wait_for(["barometer"], namespace)
    trace_id = accepted["trace_id"]
    wanted = {("ingest-api", "POST /ingest"), ("indexer-worker", "index write")}
    wait_until(lambda: whole_tree(observability.tempo_url, trace_id, wanted), 30, 0.3, "the whole trace")

    runner = CliRunner()
    as_json = runner.invoke(app, ["trace", trace_id, "--json", "--url", observability.tempo_url])
    assert as_json.exit_code == 0, as_json.output
    spans = json.loads(as_json.output)
    ids = {s["span_id"] for s in spans}
    assert {s["service"] for s in spans} >= {"ingest-api", "embedding-worker", "indexer-worker"}
    assert {s["trace_id"] for s in spans} == {trace_id}
    assert [s for s in spans if not s["parent_span_id"]] == [next(s for s in spans if s["name"] == "POST /ingest")]
    assert all(s["parent_span_id"] in ids for s in spans if s["parent_span_id"]), "one tree"

    waterfall = runner.invoke(app, ["trace", trace_id, "--url", observability.tempo_url], env={"COLUMNS": "220"})
    assert waterfall.exit_code == 0
    assert f"trace {trace_id}: {len(spans)} spans" in waterfall.output
    assert "POST /ingest" in waterfall.output and "index write" in waterfall.output and "█" in waterfall.output
    missing = runner.invoke(app, ["trace", "0" * 32, "--url", observability.tempo_url])
    assert missing.exit_code == 1 and "not found" in missing.output

    traceql = f'{{ span.document.id = "barometer" && span.ragtrace.namespace = "{namespace}" }}'

    def listing() -> Result | None:
        result = runner.invoke(app, ["traces", traceql, "--url", observability.tempo_url], env={"COLUMNS": "220"})
        return result if trace_id in result.output and "indexer-worker" in result.output else None

    listed: Result = wait_until(listing, 60, 1, "`ragtrace traces` to list the trace")
    assert listed.exit_code == 0 and "1 trace(s) match" in listed.output
    assert "ingest-api: POST /ingest" in listed.output and "indexer-worker" in listed.output
    refused = runner.invoke(app, ["traces", "{ span.document.id = ", "--url", observability.tempo_url])
    assert refused.exit_code == 2 and "Tempo refused the query (400)" in refused.output

    log_lines = [
        json.loads(line)
        for line in faiss_pipeline.supervisor.log_path("ingest-api").read_text().splitlines()
        if line.startswith("{")
    ]
    [accepted_line] = [entry for entry in log_lines if "accepted document barometer" in entry["message"]]
    assert accepted_line["trace_id"] == trace_id and len(accepted_line["span_id"]) == 16
    assert accepted_line["service"] == "ingest-api" and accepted_line["level"] == "INFO"
