"""A small scripted OpenAI-compatible upstream (chat, completions, models) that truly streams SSE.

It stands in for an LLM provider, which is outside the project. Replies are scripted with
``push(Reply(...))``; with nothing scripted it echoes the last user message. With ``capture=True``
it behaves like vLLM: ``return_token_ids`` adds ``prompt_token_ids`` (top level, first chunk when
streaming) and per-choice ``token_ids``; ``logprobs`` adds per-token logprobs. Tokens are
characters (id = code point). ``n > 1`` answers that many choices: choice ``i`` says the reply
followed by `` [i]`` (interleaved chunk by chunk when streaming). With ``capture=False`` it refuses ``return_token_ids`` with a 400, as
OpenAI does for unknown arguments. Every request body and header set is kept in ``requests``.
Run it in a test with ``serve_in_thread(FakeUpstream().app)``, or as a process with
``uvicorn --factory tests.support.fake_upstream:create_app``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Reply:
    """One scripted answer."""

    content: str | None = None
    """Assistant text; None = echo the last user message (``"echo: <text>"``)."""
    tool_calls: list[dict[str, str]] | None = None
    """Each ``{"id", "name", "arguments"}``; arguments stream in pieces."""
    reasoning: str | None = None
    finish_reason: str | None = None
    status: int = 200
    error: dict[str, Any] | None = None
    """Body sent with a non-200 status (default: an OpenAI-shaped error)."""
    delay_s: float = 0.0
    """Wait before answering at all (to provoke read timeouts)."""
    chunk_delay_s: float = 0.0
    """Wait between stream chunks."""
    chunk_chars: int = 3
    """Characters of content per stream chunk."""
    headers: dict[str, str] | None = None
    """Extra response headers (a request id, rate limits, ``retry-after``)."""


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _logprob(position: int) -> float:
    return -0.05 - 0.1 * (position % 5)


def _validating(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A body the scripted answer cannot read is answered 400, as a real server's validation would."""

    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            return JSONResponse({"error": {"message": f"invalid request: {exc!r}", "type": "invalid_request_error",
                                           "param": None, "code": None}}, status_code=400)

    return handle


class FakeUpstream:
    def __init__(self, *, capture: bool = True, model: str = "fake-model") -> None:
        self.capture = capture
        self.model = model
        self.listed: list[str] = []  # more model ids /v1/models lists (a policy server's loaded adapters)
        self.replies: collections.deque[Reply] = collections.deque()
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0
        self.disconnected = threading.Event()
        self.stored: dict[str, list[dict[str, Any]]] = {}
        """Responses API: each stored response's conversation (its input items and output), by id."""
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", _validating(self.chat), methods=["POST"]),
            Route("/v1/completions", _validating(self.completions), methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/embeddings", _validating(self.embeddings), methods=["POST"]),
            Route("/v1/responses", _validating(self.responses), methods=["POST"]),
            Route("/v1/{rest:path}", self.other, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ])

    def push(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def _next(self, body: dict[str, Any]) -> tuple[Reply, str]:
        reply = self.replies.popleft() if self.replies else Reply()
        if reply.content is not None or reply.tool_calls:
            return reply, reply.content or ""
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        return reply, "echo: " + (_text(users[-1].get("content")) if users else "")

    def _refusal(self, body: dict[str, Any]) -> Response | None:
        if not self.capture and "return_token_ids" in body:
            return JSONResponse({"error": {
                "message": "Unrecognized request argument supplied: return_token_ids",
                "type": "invalid_request_error", "param": None, "code": None}}, status_code=400)
        return None

    async def models(self, request: Request) -> Response:
        self.requests.append({"path": "/v1/models", "headers": dict(request.headers), "body": None})
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "fake"}
                                                        for name in (self.model, *self.listed)]})

    async def chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.requests.append({"path": "/v1/chat/completions", "headers": dict(request.headers), "body": body})
        refusal = self._refusal(body)
        if refusal is not None:
            return refusal
        reply, text = self._next(body)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            error = reply.error or {"error": {"message": f"scripted {reply.status}", "type": "server_error",
                                              "param": None, "code": None}}
            return JSONResponse(error, status_code=reply.status, headers=reply.headers)
        prompt_ids = [ord(c) for m in body.get("messages", []) for c in _text(m.get("content"))]
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        texts = [text if i == 0 else f"{text} [{i}]" for i in range(max(1, int(body.get("n") or 1)))]
        if body.get("stream"):
            return StreamingResponse(self._stream(body, reply, texts, prompt_ids, finish), media_type="text/event-stream",
                                     headers=reply.headers)
        choices = []
        for index, said in enumerate(texts):
            message: dict[str, Any] = {"role": "assistant", "content": said if said or not reply.tool_calls else None}
            if reply.reasoning:
                message["reasoning_content"] = reply.reasoning
            if reply.tool_calls:
                message["tool_calls"] = [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in reply.tool_calls
                ]
            choice: dict[str, Any] = {"index": index, "message": message, "finish_reason": finish, "logprobs": None}
            # as vLLM: every generated token has an id and a logprob, those of the tool calls' text too
            generated = said + "".join(c["name"] + c["arguments"] for c in reply.tool_calls or [])
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [
                    {"token": c, "logprob": _logprob(i), "bytes": list(c.encode()), "top_logprobs": []}
                    for i, c in enumerate(generated)]}
            if self.capture and body.get("return_token_ids"):
                choice["token_ids"] = [ord(c) for c in generated]
            choices.append(choice)
        completion_tokens = sum(map(len, texts))
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{time.monotonic_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or self.model, "choices": choices,
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                      "total_tokens": len(prompt_ids) + completion_tokens},
        }
        if self.capture and body.get("return_token_ids"):
            answer["prompt_token_ids"] = prompt_ids
        return JSONResponse(answer, headers=reply.headers)

    async def _stream(self, body: dict[str, Any], reply: Reply, texts: list[str], prompt_ids: list[int],
                      finish: str) -> AsyncIterator[bytes]:
        ident, created, model = f"chatcmpl-{time.monotonic_ns()}", int(time.time()), body.get("model") or self.model
        capture_ids = self.capture and body.get("return_token_ids")
        finished = False

        def chunk(delta: dict[str, Any], *, finish_reason: str | None = None, piece: str = "", start: int = 0,
                  first: bool = False, index: int = 0) -> bytes:
            choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            data: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created,
                                    "model": model, "choices": [choice]}
            if body.get("logprobs") and piece:
                choice["logprobs"] = {"content": [
                    {"token": c, "logprob": _logprob(start + i), "bytes": list(c.encode()), "top_logprobs": []}
                    for i, c in enumerate(piece)]}
            if capture_ids:
                choice["token_ids"] = [ord(c) for c in piece]
                if first:
                    data["prompt_token_ids"] = prompt_ids
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        try:
            choices = range(len(texts))
            for n in choices:
                yield chunk({"role": "assistant", "content": ""}, first=n == 0, index=n)
            if reply.reasoning:
                for n in choices:
                    yield chunk({"reasoning_content": reply.reasoning}, index=n)
            step = max(1, reply.chunk_chars)
            for start in range(0, max(map(len, texts)), step):
                if reply.chunk_delay_s:
                    await asyncio.sleep(reply.chunk_delay_s)
                for n in choices:
                    if piece := texts[n][start:start + step]:
                        yield chunk({"content": piece}, piece=piece, start=start, index=n)
            for n in choices:
                position = len(texts[n])  # tool-call deltas carry their tokens' ids and logprobs, as vLLM's do
                for index, call in enumerate(reply.tool_calls or []):
                    yield chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                 "function": {"name": call["name"], "arguments": ""}}]},
                                piece=call["name"], start=position, index=n)
                    position += len(call["name"])
                    args = call["arguments"]
                    for start in range(0, len(args), 4):
                        if reply.chunk_delay_s:
                            await asyncio.sleep(reply.chunk_delay_s)
                        yield chunk({"tool_calls": [{"index": index, "function": {"arguments": args[start:start + 4]}}]},
                                    piece=args[start:start + 4], start=position, index=n)
                        position += len(args[start:start + 4])
            for n in choices:
                yield chunk({}, finish_reason=finish, index=n)
            if (body.get("stream_options") or {}).get("include_usage"):
                completion_tokens = sum(map(len, texts))
                usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                         "total_tokens": len(prompt_ids) + completion_tokens}
                data = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": usage}
                yield b"data: " + json.dumps(data).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:
                self.disconnects += 1
                self.disconnected.set()

    async def completions(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.requests.append({"path": "/v1/completions", "headers": dict(request.headers), "body": body})
        text = "echo: " + str(body.get("prompt", ""))
        answer = {"id": f"cmpl-{time.monotonic_ns()}", "object": "text_completion", "created": int(time.time()),
                  "model": body.get("model") or self.model,
                  "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}]}
        if not body.get("stream"):
            return JSONResponse(answer)

        async def events() -> AsyncIterator[bytes]:
            for start in range(0, len(text), 4):
                piece = dict(answer, choices=[{"index": 0, "text": text[start:start + 4], "finish_reason": None}])
                yield b"data: " + json.dumps(piece).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


    async def embeddings(self, request: Request) -> Response:
        """One vector per input: its length, and the code point of its first character."""
        body = json.loads(await request.body())
        self.requests.append({"path": "/v1/embeddings", "headers": dict(request.headers), "body": body})
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [float(len(text)), float(ord(text[0]) if text else 0)]}
                for i, text in enumerate(inputs)]
        return JSONResponse({"object": "list", "data": data, "model": body.get("model") or self.model,
                             "usage": {"prompt_tokens": sum(map(len, inputs)), "total_tokens": sum(map(len, inputs))}})

    async def responses(self, request: Request) -> Response:
        """The Responses API, as OpenAI serves it: stored responses continued by ``previous_response_id``,
        text and function calls, streamed as typed events ending with ``response.completed``."""
        body = json.loads(await request.body())
        self.requests.append({"path": "/v1/responses", "headers": dict(request.headers), "body": body})
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return JSONResponse({"error": {"message": f"Previous response with id '{previous}' not found.",
                                           "type": "invalid_request_error", "param": "previous_response_id",
                                           "code": "previous_response_not_found"}}, status_code=400)
        given = body.get("input")
        new_items = [{"type": "message", "role": "user", "content": given}] if isinstance(given, str) else list(given or [])
        history = [*self.stored.get(previous, []), *new_items]
        users = [_text(i.get("content")) for i in history if i.get("type", "message") == "message" and i.get("role") == "user"]
        reply = self.replies.popleft() if self.replies else Reply()
        if reply.status != 200:
            error = reply.error or {"error": {"message": f"scripted {reply.status}", "type": "server_error",
                                              "param": None, "code": None}}
            return JSONResponse(error, status_code=reply.status, headers=reply.headers)
        text = reply.content or "" if reply.content is not None or reply.tool_calls else "echo: " + (users[-1] if users else "")
        stamp = time.monotonic_ns()
        output: list[dict[str, Any]] = []
        if text:
            output.append({"type": "message", "id": f"msg_{stamp}", "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "text": text, "annotations": []}]})
        output += [{"type": "function_call", "id": f"fc_{stamp}_{i}", "call_id": c["id"], "name": c["name"],
                    "arguments": c["arguments"], "status": "completed"} for i, c in enumerate(reply.tool_calls or [])]
        incomplete = reply.finish_reason == "length"
        prompt_tokens = sum(len(_text(i.get("content"))) for i in history)
        answer: dict[str, Any] = {
            "id": f"resp_{stamp}", "object": "response", "created_at": int(time.time()),
            "status": "incomplete" if incomplete else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None, "error": None,
            "model": body.get("model") or self.model, "instructions": body.get("instructions"), "output": output,
            "parallel_tool_calls": True, "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools", []),
            "previous_response_id": previous,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": len(text),
                      "total_tokens": prompt_tokens + len(text)},
        }
        if body.get("store", True):
            self.stored[answer["id"]] = [*history, *output]
        if not body.get("stream"):
            return JSONResponse(answer, headers=reply.headers)

        async def events() -> AsyncIterator[bytes]:
            sequence = iter(range(1_000_000))

            def event(kind: str, **fields: Any) -> bytes:
                payload = {"type": kind, "sequence_number": next(sequence), **fields}
                return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()

            yield event("response.created", response={**answer, "status": "in_progress", "output": [], "usage": None})
            for index, item in enumerate(output):
                yield event("response.output_item.added", output_index=index, item={**item, "content": []}
                            if item["type"] == "message" else item)
                if item["type"] == "message":
                    yield event("response.content_part.added", item_id=item["id"], output_index=index,
                                content_index=0, part={"type": "output_text", "text": "", "annotations": []})
                    for start in range(0, len(text), reply.chunk_chars):
                        await asyncio.sleep(reply.chunk_delay_s)
                        yield event("response.output_text.delta", item_id=item["id"], output_index=index,
                                    content_index=0, delta=text[start:start + reply.chunk_chars])
                    yield event("response.output_text.done", item_id=item["id"], output_index=index,
                                content_index=0, text=text)
                    yield event("response.content_part.done", item_id=item["id"], output_index=index,
                                content_index=0, part=item["content"][0])
                yield event("response.output_item.done", output_index=index, item=item)
            yield event("response.incomplete" if incomplete else "response.completed", response=answer)

        return StreamingResponse(events(), media_type="text/event-stream", headers=reply.headers)

    async def other(self, request: Request) -> Response:
        """Any other ``/v1`` path: says what it received (``?stream=1``: as three server-sent events)."""
        raw = await request.body()
        seen = {"object": "echo", "method": request.method, "path": request.url.path, "query": request.url.query,
                "content_type": request.headers.get("content-type"), "body_bytes": len(raw)}
        self.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": raw})
        if request.query_params.get("stream") != "1":
            return JSONResponse(seen, headers={"x-request-id": "req-echo"})

        async def events() -> AsyncIterator[bytes]:
            for index in range(3):
                yield b"data: " + json.dumps(dict(seen, index=index)).encode() + b"\n\n"
                await asyncio.sleep(0.05)

        return StreamingResponse(events(), media_type="text/event-stream")


def create_app() -> Starlette:
    """Factory for running the fake upstream as a process (benchmarks); keeps no request log.

    ``FAKE_UPSTREAM_DELAY_S`` makes every answer wait that long first (an upstream that takes time to
    generate, as any LLM server does, while its CPU stays free).
    """
    upstream = FakeUpstream()
    upstream.requests = _Discard()
    delay = float(os.environ.get("FAKE_UPSTREAM_DELAY_S") or 0)
    if delay > 0:
        upstream.replies = _Always(Reply(delay_s=delay))
    return upstream.app


class _Always(collections.deque[Reply]):
    """A script that never runs out: every request gets the same reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__([reply])

    def popleft(self) -> Reply:
        return self[0]


class _Discard(list[dict[str, Any]]):
    def append(self, item: dict[str, Any]) -> None:
        pass
