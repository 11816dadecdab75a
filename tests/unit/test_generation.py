"""Who answers, known before the cache is asked: the producer a cached answer is keyed by, against the real
OpenAI-compatible test server (tests/llm_server.py) in its own process."""

from __future__ import annotations

from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from query.generation import Answer, Generator, Producer
from query.settings import LLMSettings
from ragtrace.vectorstore import Hit
from tests.conftest import LLMServer
from tests.pipeline import LLM_API_KEY

HITS = [Hit("bread:0", "bread", "Sourdough bread rises because wild yeast ferments the dough.", 1.0, {})]


def _generator(base_url: str, model: str = "") -> Generator:
    return Generator(LLMSettings(base_url=base_url, model=model, api_key=LLM_API_KEY))


async def _answer(generator: Generator, producer: Producer) -> Answer:
    answer = Answer()
    async for _ in generator.answer("Why does bread rise?", "ns", HITS, 64, producer, answer):
        pass
    return answer


async def test_the_producer_is_the_model_the_server_lists_when_none_is_configured(llm_server: LLMServer) -> None:
    generator = _generator(llm_server.url)
    try:
        producer = await generator.producer()
        assert producer == Producer("llm", "test-llm") and producer.name == "llm:test-llm"
        answer = await _answer(generator, producer)
        assert (answer.generator, answer.model, answer.fallback) == ("llm", "test-llm", False)
    finally:
        await generator.close()


async def test_without_an_llm_the_producer_is_extractive_and_its_answer_no_fallback() -> None:
    generator = _generator("")
    try:
        producer = await generator.producer()
        assert producer.name == "extractive"
        answer = await _answer(generator, producer)
        assert (answer.generator, answer.fallback) == ("extractive", False)
    finally:
        await generator.close()


async def test_an_llm_that_cannot_be_reached_has_no_producer_name_and_falls_back(llm_server: LLMServer) -> None:
    generator = _generator(llm_server.url)
    try:
        with llm_server.supervisor.stopped(llm_server.component):
            producer = await generator.producer()
            answer = await _answer(generator, producer)
        assert producer.unavailable and producer.name == "", "nothing to key a cached answer by"
        assert (answer.generator, answer.fallback) == ("extractive", True)
        assert answer.reason.startswith("LLM unavailable: listing models failed")
        assert (await generator.producer()).name == "llm:test-llm", "learned once the server is back"
    finally:
        await generator.close()


async def test_the_instrumented_chat_span_carries_ragtrace_s_attributes_and_the_http_call(
    llm_server: LLMServer,
) -> None:
    """The OpenAI instrumentation's span is the one ragtrace adds to (provider, time to first token): it must be
    current while the SDK sends, which an upgrade of either library could change."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    generator = _generator(llm_server.url, "test-llm")
    try:
        answer = await _answer(generator, Producer("llm", "test-llm"))
    finally:
        await generator.close()
        HTTPXClientInstrumentor().uninstrument()
        OpenAIInstrumentor().uninstrument()
    spans = exporter.get_finished_spans()
    [chat] = [s for s in spans if s.name == "chat test-llm"]
    [http] = [s for s in spans if s.name == "POST"]
    assert chat.attributes is not None and answer.generator == "llm" and answer.parts
    assert http.parent is not None and http.parent.span_id == chat.context.span_id, "the HTTP call under the chat"
    assert chat.attributes["gen_ai.provider.name"] == "vllm"
    assert chat.attributes["ragtrace.llm.time_to_first_chunk_ms"] == answer.time_to_first_token_ms > 0
    assert [e.name for e in chat.events] == ["gen_ai.first_chunk"]
    # The server's usage, as the instrumentation read it and as the answer reports it.
    assert (chat.attributes["gen_ai.usage.input_tokens"], chat.attributes["gen_ai.usage.output_tokens"]) == (
        answer.input_tokens,
        answer.output_tokens,
    )
    assert answer.output_tokens == len(answer.parts)
