"""Answers: from an LLM behind an OpenAI-compatible API (vLLM), streamed, with numbered-source citations;
extractive from the top sources when no LLM is configured or it fails; none when nothing was found."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import httpx
import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from query.settings import LLMSettings
from ragtrace.metrics import observe
from ragtrace.vectorstore import Hit

TIME_TO_FIRST_TOKEN = Histogram(
    "ragtrace_llm_time_to_first_token_seconds",
    "From sending the chat request to the first streamed token",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
LLM_TOKENS = Counter("ragtrace_llm_tokens", "Tokens the LLM reported (input, output)", ["model", "direction"])
LLM_REQUESTS = Counter("ragtrace_llm_requests", "Chat requests to the LLM by outcome (ok, error)", ["model", "outcome"])
ANSWERS = Counter("ragtrace_answers", "Answers given, by generator (llm, extractive, none)", ["generator"])

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources you are given. Cite every source you use with "
    "its number in brackets, like [1] or [2][3]. If the sources do not contain the answer, say so plainly."
)
NO_DOCUMENTS = "No relevant documents were found in namespace '{namespace}'."
CHARS_PER_TOKEN = 4  # budgeting estimate; the LLM's own tokenizer is not available to the search service


class LLMUnavailable(RuntimeError):
    """The LLM could not be reached or failed: the answer falls back to extractive."""


@dataclass(frozen=True)
class Producer:
    """What is to answer a question that has sources, known before the cache is looked in: the LLM and the
    model it serves (configured, or the one the server lists), or extractive. `unavailable`: why the configured
    LLM cannot answer now; its extractive fallback is no answer of this producer's."""

    generator: str  # "llm" or "extractive"
    model: str = ""
    unavailable: str = ""

    @property
    def name(self) -> str:
        """What a cached answer is keyed by: "llm:<model>" or "extractive"; empty while the LLM is unavailable."""
        if self.unavailable:
            return ""
        return f"llm:{self.model}" if self.generator == "llm" else self.generator


@dataclass
class Answer:
    """What generation produced, filled in while it streams."""

    generator: str = "none"  # "llm", "extractive" or "none"
    reason: str = ""
    model: str = ""
    fallback: bool = False  # not what the producer gives: extractive because the LLM failed, or the LLM's cut off
    input_tokens: int = 0
    output_tokens: int = 0
    time_to_first_token_ms: float = 0.0
    generate_ms: float = 0.0
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def build_messages(query: str, hits: Sequence[Hit], max_context_tokens: int) -> list[ChatCompletionMessageParam]:
    """The chat prompt: sources numbered [1]..[n] in rank order, as many as fit the token budget."""
    budget = max_context_tokens - estimate_tokens(SYSTEM_PROMPT + query)
    sources = []
    for number, hit in enumerate(hits, start=1):
        title = hit.metadata.get("title", "")
        block = f"[{number}] {title}\n{hit.content}".strip()
        cost = estimate_tokens(block)
        if cost > budget:
            break
        sources.append(block)
        budget -= cost
    user = "Sources:\n\n" + "\n\n".join(sources) + f"\n\nQuestion: {query}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+")


def extractive_answer(query: str, hits: Sequence[Hit], max_sentences: int = 3) -> str:
    """The sentences of the top sources that share the most words with the question, cited by number."""
    terms = {w for w in _WORD.findall(query.lower()) if len(w) > 2}
    scored: list[tuple[int, int, int, str]] = []
    for number, hit in enumerate(hits[:3], start=1):
        for position, sentence in enumerate(s.strip() for s in _SENTENCE.split(hit.content) if s.strip()):
            overlap = len(terms & set(_WORD.findall(sentence.lower())))
            scored.append((overlap, -number, -position, f"{sentence} [{number}]"))
    best = sorted(scored, reverse=True)[:max_sentences]
    # In source order, so the answer reads like the sources do.
    return " ".join(text for _, _, _, text in sorted(best, key=lambda s: (-s[1], -s[2])))


class Generator:
    """Answers through the `openai` SDK against an OpenAI-compatible API (vLLM's). The chat span, its gen_ai.*
    attributes and the HTTP call under it come from opentelemetry-instrumentation-openai-v2 (ragtrace/telemetry.py);
    ragtrace adds the provider's name, time to first token and the fallback."""

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self.client = AsyncOpenAI(
            base_url=settings.base_url or None,
            # vLLM started without --api-key takes any key; the SDK insists on one.
            api_key=settings.api_key.get_secret_value() if settings.api_key else "EMPTY",
            timeout=httpx.Timeout(settings.first_token_timeout_s, connect=settings.connect_timeout_s),
            max_retries=0,  # a failed LLM is an extractive answer now, not a retried one later
            http_client=httpx.AsyncClient(event_hooks={"request": [_note_chat_span]}),
        )
        self._model = settings.model

    @property
    def configured(self) -> bool:
        return bool(self.settings.base_url)

    async def producer(self) -> Producer:
        """Who answers now: without an LLM configured, extractive; with one, the LLM and its model."""
        if not self.configured:
            return Producer("extractive")
        try:
            return Producer("llm", await self._model_name())
        except LLMUnavailable as error:
            return Producer("llm", unavailable=str(error))

    async def answer(
        self, query: str, namespace: str, hits: Sequence[Hit], max_tokens: int, producer: Producer, answer: Answer
    ) -> AsyncIterator[str]:
        """Yield the answer's text as it is produced by `producer` (`producer()`'s), falling back to extractive
        when the LLM fails; `answer` holds the generator, usage and timings."""
        started = time.perf_counter()
        try:
            if not hits:
                answer.generator, answer.reason = "none", "no relevant documents"
                text = NO_DOCUMENTS.format(namespace=namespace)
                answer.parts.append(text)
                yield text
                return
            if producer.generator == "extractive":
                answer.reason = "no LLM configured (RAGTRACE_LLM_BASE_URL is empty)"
            elif producer.unavailable:
                answer.reason, answer.fallback = f"LLM unavailable: {producer.unavailable}", True
            else:
                try:
                    async for token in self._llm(query, hits, max_tokens, producer.model, answer):
                        yield token
                    return
                except LLMUnavailable as error:
                    self._model = self.settings.model  # a model it listed is asked for again: it may serve another now
                    answer.fallback = True
                    if answer.parts:  # part of the answer is out already: say it was cut off
                        answer.reason = f"LLM failed mid-answer: {error}"
                        return
                    answer.reason = f"LLM unavailable: {error}"
            answer.generator = "extractive"
            text = extractive_answer(query, hits)
            answer.parts.append(text)
            yield text
        finally:
            answer.generate_ms = (time.perf_counter() - started) * 1000
            ANSWERS.labels(answer.generator).inc()

    async def _model_name(self) -> str:
        """The configured model, else the first the server lists (asked once, and again after the LLM failed:
        it may have been restarted with another model)."""
        if not self._model:
            try:
                models = await self.client.models.list()
                self._model = models.data[0].id
            except (openai.APIError, IndexError) as error:
                LLM_REQUESTS.labels("unknown", "error").inc()
                raise LLMUnavailable(f"listing models failed: {error!r}") from error
        return self._model

    async def _llm(
        self, query: str, hits: Sequence[Hit], max_tokens: int, model: str, answer: Answer
    ) -> AsyncIterator[str]:
        messages = build_messages(query, hits, self.settings.max_context_tokens)
        answer.model = model
        answer.generator = "llm"
        started = time.perf_counter()
        _chat_span.set(trace.INVALID_SPAN)
        try:
            stream = await self.client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=max_tokens,
                temperature=self.settings.temperature,
                stream=True,
                stream_options={"include_usage": True},
            )
            chat_span = _chat_span.get()
            chat_span.set_attribute("gen_ai.provider.name", self.settings.provider)
            async with stream:
                async for chunk in stream:
                    if time.perf_counter() - started > self.settings.timeout_s:
                        raise TimeoutError(f"the answer took longer than {self.settings.timeout_s:.0f}s")
                    if chunk.usage is not None:  # the server's own count, in the last chunk
                        answer.input_tokens = chunk.usage.prompt_tokens
                        answer.output_tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        piece = choice.delta.content or ""
                        if not piece:
                            continue
                        if not answer.parts:
                            first_token_ms = answer.time_to_first_token_ms = (time.perf_counter() - started) * 1000
                            chat_span.add_event("gen_ai.first_chunk")
                            chat_span.set_attribute("ragtrace.llm.time_to_first_chunk_ms", first_token_ms)
                            observe(TIME_TO_FIRST_TOKEN.labels(model), first_token_ms / 1000, chat_span)
                        answer.parts.append(piece)
                        yield piece
        except (openai.APIError, httpx.HTTPError, TimeoutError) as error:
            LLM_REQUESTS.labels(model, "error").inc()
            raise LLMUnavailable(_reason(error)) from error
        else:
            LLM_REQUESTS.labels(model, "ok").inc()
        finally:
            LLM_TOKENS.labels(model, "input").inc(answer.input_tokens)
            LLM_TOKENS.labels(model, "output").inc(answer.output_tokens)

    async def close(self) -> None:
        await self.client.close()


# The chat span of the request being sent: the OpenAI instrumentation makes it current while the SDK sends, so the
# HTTP client's request hook sees it. A context variable, as each request runs in its own task.
_chat_span: ContextVar[trace.Span] = ContextVar("chat_span", default=trace.INVALID_SPAN)


async def _note_chat_span(request: httpx.Request) -> None:
    _chat_span.set(trace.get_current_span())


def _reason(error: Exception) -> str:
    """Why the LLM failed, as the answer's reason says it: the server's status and message, else the error."""
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message[:200]}"
    return repr(error)
