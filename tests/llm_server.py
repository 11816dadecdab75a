"""An OpenAI-compatible chat server for the tests, standing in for vLLM (which needs a GPU): the real HTTP
protocol, streaming (server-sent `chat.completion.chunk` events, usage in the last one) included.

It answers from the prompt it is given: "According to [1], <the first sentence of source 1>", so a test can
tell that the answer came from here and cited the right source. GET /stats counts the completions asked for.
LLM_SERVER_SECONDS_PER_TOKEN (default 0) paces a streamed answer, for tests that need a stream still under way
(the search page's two searches in a row).

Run: `python -m tests.llm_server` with LLM_SERVER_PORT and LLM_SERVER_API_KEY set.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

MODEL = "test-llm"
SECONDS_PER_TOKEN = float(os.environ.get("LLM_SERVER_SECONDS_PER_TOKEN", "0"))
app = FastAPI()
calls = {"chat_completions": 0}


def _authorize(authorization: str | None) -> None:
    if authorization != f"Bearer {os.environ['LLM_SERVER_API_KEY']}":
        raise HTTPException(401, "invalid API key")


def _answer(messages: list[dict[str, str]]) -> str:
    prompt = messages[-1]["content"]
    source = re.search(r"^\[1\][^\n]*\n(.+?)(?:\n\n|$)", prompt, flags=re.MULTILINE | re.DOTALL)
    if not source:
        return "The sources do not say."
    first_sentence = re.split(r"(?<=[.!?])\s", source.group(1).strip())[0]
    return f"According to [1], {first_sentence}"


@app.get("/v1/models")
def models(authorization: str | None = Header(default=None)) -> dict[str, Any]:
    _authorize(authorization)
    return {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "tests"}]}


@app.get("/stats")
def stats() -> dict[str, int]:
    return calls


@app.post("/v1/chat/completions", response_model=None)
async def chat(request: Request, authorization: str | None = Header(default=None)) -> Any:
    _authorize(authorization)
    calls["chat_completions"] += 1
    body = await request.json()
    answer = _answer(body["messages"])
    pieces = [word + " " for word in answer.split(" ")]
    pieces[-1] = pieces[-1].rstrip()
    pieces = pieces[: body.get("max_tokens") or len(pieces)]
    usage = {
        "prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
        "completion_tokens": len(pieces),
        "total_tokens": 0,
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    identifier, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if not body.get("stream"):
        return JSONResponse(
            {
                "id": identifier,
                "object": "chat.completion",
                "created": created,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "finish_reason": "stop"}
                ],
                "usage": usage,
            }
        )

    def chunk(delta: dict[str, str], finish_reason: str | None = None, **extra: Any) -> dict[str, str]:
        payload = {
            "id": identifier,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body["model"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            **extra,
        }
        return {"data": json.dumps(payload)}

    async def events() -> AsyncIterator[dict[str, str]]:
        yield chunk({"role": "assistant"})
        for piece in pieces:
            await asyncio.sleep(SECONDS_PER_TOKEN)
            yield chunk({"content": piece})
        yield chunk({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            final = {
                "id": identifier,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body["model"],
                "choices": [],
                "usage": usage,
            }
            yield {"data": json.dumps(final)}
        yield {"data": "[DONE]"}

    return EventSourceResponse(events())


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["LLM_SERVER_PORT"]), log_level="warning")
