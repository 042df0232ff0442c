"""The Responses API on the policy server (text in, text out) over the chat path: ``instructions``,
``input`` items, ``previous_response_id`` naming a response this server stored, streamed as typed
events."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from learner.modeling import render_prompt_ids
from learner.serving_generation import Generation
from learner.serving_http import json_object, policy_server, sse, validate
from learner.serving_protocol import ChatRequest, NotFound, ServingError, new_id, now
from proxy.items import chat_tools, to_messages

RESPONSES_KEPT = 1024
"""Stored responses a later request can continue by ``previous_response_id`` (the oldest are forgotten)."""


async def responses(request: Request) -> Response:
    """``POST /v1/responses``."""
    server = policy_server(request)
    body = await json_object(request)
    kept: OrderedDict[str, list[dict[str, Any]]] = request.app.state.responses
    previous = body.get("previous_response_id")
    if previous is not None and previous not in kept:
        raise NotFound(f"Previous response with id '{previous}' not found.", param="previous_response_id")
    try:
        conversation = [*kept.get(previous, []), *to_messages(body.get("input", []))]
    except ValueError as exc:
        raise ServingError(str(exc), param="input") from exc
    instructions = body.get("instructions")
    system = [{"role": "system", "content": instructions}] if isinstance(instructions, str) and instructions else []
    req: ChatRequest = validate(ChatRequest, {
        "model": body.get("model"), "messages": [*system, *conversation], "tools": chat_tools(body.get("tools")),
        "temperature": body.get("temperature"), "top_p": body.get("top_p"), "max_tokens": body.get("max_output_tokens"),
        "stream": bool(body.get("stream")),
    })
    model_name, adapter = server.resolve(req.model)
    try:
        prompt_ids = render_prompt_ids(server.tokenizer, req.messages, req.tools)
    except Exception as exc:
        raise ServingError(f"the input could not be rendered with the chat template: {exc}", param="input") from exc
    generation = server.start(req, prompt_ids, adapter, None)
    store = body.get("store") is not False
    response: dict[str, Any] = {
        "id": new_id("resp"), "object": "response", "created_at": now(), "status": "in_progress", "model": model_name,
        "instructions": instructions, "previous_response_id": previous, "output": [], "usage": None, "error": None,
        "incomplete_details": None, "tools": body.get("tools") or [], "tool_choice": "auto", "parallel_tool_calls": True,
        "temperature": req.temperature, "top_p": req.top_p, "max_output_tokens": req.max_tokens, "store": store,
        "text": {"format": {"type": "text"}},
    }
    message_id = new_id("msg")

    def finished(text: str, finish: str | None, produced: int) -> dict[str, Any]:
        cut = finish == "length"
        item = {"type": "message", "id": message_id, "status": "incomplete" if cut else "completed",
                "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}
        done = {**response, "status": "incomplete" if cut else "completed", "output": [item],
                "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                "usage": {"input_tokens": len(prompt_ids), "output_tokens": produced,
                          "total_tokens": len(prompt_ids) + produced, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}
        if store:
            kept[done["id"]] = [*conversation, {"role": "assistant", "content": text}]
            while len(kept) > RESPONSES_KEPT:
                kept.popitem(last=False)
        return done

    if req.stream:
        return StreamingResponse(_response_events(response, message_id, generation, finished),
                                 media_type="text/event-stream")
    text, produced, finish = "", 0, None
    async for piece in generation:
        text, produced, finish = text + piece.text, produced + len(piece.token_ids), piece.finish or finish
    return JSONResponse(finished(text, finish, produced))


async def _response_events(response: dict[str, Any], message_id: str, generation: Generation,
                           finished: Any) -> AsyncIterator[bytes]:
    """The Responses API's stream: lifecycle events around one message's text deltas."""
    sequence = itertools.count()

    def event(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\n".encode() + sse({"type": kind, "sequence_number": next(sequence), **fields})

    at = {"item_id": message_id, "output_index": 0, "content_index": 0}
    yield event("response.created", response=response)
    yield event("response.in_progress", response=response)
    yield event("response.output_item.added", output_index=0,
                item={"type": "message", "id": message_id, "status": "in_progress", "role": "assistant", "content": []})
    yield event("response.content_part.added", **at, part={"type": "output_text", "text": "", "annotations": []})
    text, produced, finish = "", 0, None
    try:
        async for piece in generation:
            text, produced, finish = text + piece.text, produced + len(piece.token_ids), piece.finish or finish
            if piece.text:
                yield event("response.output_text.delta", **at, delta=piece.text)
    except ServingError as exc:
        yield event("response.failed", response={**response, "status": "failed",
                                                 "error": {"code": "server_error", "message": exc.message}})
        return
    finally:
        generation.close()
    done = finished(text, finish, produced)
    [item] = done["output"]
    yield event("response.output_text.done", **at, text=text)
    yield event("response.content_part.done", **at, part=item["content"][0])
    yield event("response.output_item.done", output_index=0, item=item)
    yield event("response.incomplete" if done["status"] == "incomplete" else "response.completed", response=done)
