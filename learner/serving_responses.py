"""The Responses API on the policy server over the chat path: ``instructions``, ``input`` items (messages,
function calls and their outputs), ``previous_response_id`` naming a response this server stored;
the answer as a message and, when ``tools`` are offered, a ``function_call`` item per tool call it
makes; streamed as typed events."""

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
from learner.serving_tools import ToolCall, ToolCallParser, wants_tool_calls
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
    choice = body.get("tool_choice")
    req: ChatRequest = validate(ChatRequest, {
        "model": body.get("model"), "messages": [*system, *conversation], "tools": chat_tools(body.get("tools")),
        "tool_choice": choice, "temperature": body.get("temperature"), "top_p": body.get("top_p"),
        "max_tokens": body.get("max_output_tokens"), "stream": bool(body.get("stream")),
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
        "incomplete_details": None, "tools": body.get("tools") or [], "tool_choice": choice or "auto",
        "parallel_tool_calls": True, "temperature": req.temperature, "top_p": req.top_p,
        "max_output_tokens": req.max_tokens, "store": store, "text": {"format": {"type": "text"}},
    }
    output = _Output(wants_tool_calls(req.tools, req.tool_choice))

    def finished(finish: str | None, produced: int) -> dict[str, Any]:
        cut = finish == "length"
        items = output.close("incomplete" if cut else "completed")
        done = {**response, "status": "incomplete" if cut else "completed", "output": items,
                "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                "usage": {"input_tokens": len(prompt_ids), "output_tokens": produced,
                          "total_tokens": len(prompt_ids) + produced, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}
        if store:
            kept[done["id"]] = [*conversation, output.as_message()]
            while len(kept) > RESPONSES_KEPT:
                kept.popitem(last=False)
        return done

    if req.stream:
        return StreamingResponse(_response_events(response, output, generation, finished),
                                 media_type="text/event-stream")
    produced, finish = 0, None
    async for piece in generation:
        output.feed(piece.text)
        produced, finish = produced + len(piece.token_ids), piece.finish or finish
    output.feed_end()
    return JSONResponse(finished(finish, produced))


class _Output:
    """The response's output items in the order the answer produced them: one message (its text outside
    any tool call) and a ``function_call`` item per call the answer makes (``learner.serving_tools``)."""

    def __init__(self, parse: bool) -> None:
        self.parser = ToolCallParser() if parse else None
        self.items: list[dict[str, Any]] = []
        self.message: dict[str, Any] | None = None
        self.text = ""

    def feed(self, text: str) -> tuple[str, list[int]]:
        """Adds generated text; returns the message text it adds and the indexes of new call items."""
        if self.parser is None:
            content, calls = text, []
        else:
            content, calls = self.parser.feed(text)
        return self._add(content, calls)

    def feed_end(self) -> tuple[str, list[int]]:
        return self._add(*self.parser.finish()) if self.parser is not None else ("", [])

    def open_message(self) -> int:
        """Index of the message item, added now if there is none yet."""
        if self.message is None:
            self.message = {"type": "message", "id": new_id("msg"), "status": "in_progress", "role": "assistant",
                            "content": []}
            self.items.append(self.message)
        return self.items.index(self.message)

    def close(self, status: str) -> list[dict[str, Any]]:
        """The final items: the message completed with its text (an answer with neither text nor a call
        still has its empty message)."""
        if self.message is None and not self.items:
            self.open_message()
        if self.message is not None:
            self.message.update(status=status, content=[{"type": "output_text", "text": self.text, "annotations": []}])
        return self.items

    def as_message(self) -> dict[str, Any]:
        """The answer as a chat message, as the next request continues from it."""
        calls = self.parser.calls if self.parser is not None else []
        if not calls:
            return {"role": "assistant", "content": self.text}
        return {"role": "assistant", "content": self.text or None, "tool_calls": [c.message() for c in calls]}

    def _add(self, content: str, calls: list[ToolCall]) -> tuple[str, list[int]]:
        if content:
            self.open_message()
            self.text += content
        added = []
        for call in calls:
            added.append(len(self.items))
            self.items.append({"type": "function_call", "id": new_id("fc"), "call_id": call.id, "name": call.name,
                               "arguments": call.arguments, "status": "completed"})
        return content, added


async def _response_events(response: dict[str, Any], output: _Output, generation: Generation,
                           finished: Any) -> AsyncIterator[bytes]:
    """The Responses API's stream: lifecycle events around the message's text deltas and each call's item."""
    sequence = itertools.count()

    def event(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\n".encode() + sse({"type": kind, "sequence_number": next(sequence), **fields})

    announced = False

    def message_events(text: str) -> list[bytes]:
        nonlocal announced
        index, events = output.open_message(), []
        at = {"item_id": output.items[index]["id"], "output_index": index, "content_index": 0}
        if not announced:
            announced = True
            events += [event("response.output_item.added", output_index=index,
                             item={**output.items[index], "status": "in_progress", "content": []}),
                       event("response.content_part.added", **at, part={"type": "output_text", "text": "", "annotations": []})]
        if text:
            events.append(event("response.output_text.delta", **at, delta=text))
        return events

    def call_events(indexes: list[int]) -> list[bytes]:
        events = []
        for index in indexes:
            item = output.items[index]
            at = {"item_id": item["id"], "output_index": index}
            events += [event("response.output_item.added", output_index=index,
                             item={**item, "arguments": "", "status": "in_progress"}),
                       event("response.function_call_arguments.delta", **at, delta=item["arguments"]),
                       event("response.function_call_arguments.done", **at, arguments=item["arguments"]),
                       event("response.output_item.done", output_index=index, item=item)]
        return events

    def produced_events(text: str, calls: list[int]) -> list[bytes]:
        return [*(message_events(text) if text else []), *call_events(calls)]

    yield event("response.created", response=response)
    yield event("response.in_progress", response=response)
    if output.parser is None:  # plain text: the message opens at once, as before any tool was offered
        for chunk in message_events(""):
            yield chunk
    produced, finish = 0, None
    try:
        async for piece in generation:
            produced, finish = produced + len(piece.token_ids), piece.finish or finish
            for chunk in produced_events(*output.feed(piece.text)):
                yield chunk
        for chunk in produced_events(*output.feed_end()):
            yield chunk
    except ServingError as exc:
        yield event("response.failed", response={**response, "status": "failed",
                                                 "error": {"code": "server_error", "message": exc.message}})
        return
    finally:
        generation.close()
    if output.message is None and not output.items:  # neither text nor a call: an empty message
        for chunk in message_events(""):
            yield chunk
    done = finished(finish, produced)
    if output.message is not None:
        index = output.items.index(output.message)
        at = {"item_id": output.message["id"], "output_index": index, "content_index": 0}
        yield event("response.output_text.done", **at, text=output.text)
        yield event("response.content_part.done", **at, part=output.message["content"][0])
        yield event("response.output_item.done", output_index=index, item=output.message)
    yield event("response.incomplete" if done["status"] == "incomplete" else "response.completed", response=done)
