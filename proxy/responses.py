"""``POST /v1/responses``: the Responses API served through the proxy, and its turns recorded as chat turns.

The request goes upstream as the client sent it (its model replaced when routing says so); the answer
comes back as it arrives, streamed or whole. The turn is recorded like a chat turn (see proxy.items):
its conversation is the request's instructions and input, after the conversation of the response it
continues (``previous_response_id``), which the proxy keeps for every response it records. Sessions,
next states, opt-out, side turns and canary routing work as on ``/v1/chat/completions``. A turn whose
earlier conversation the proxy does not know (a response it never recorded, a stored conversation
object) is served and not recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from proxy import items
from proxy.capture import client_wants, forward_body
from proxy.chat import (
    closes_session,
    count_broken,
    decode_body,
    forward_headers,
    forward_routed,
    header_value,
    key_hash,
    parse_json_object,
    read_body,
    recorded,
    relay,
)
from proxy.errors import ProxyError, error_response
from proxy.ids import new_id
from proxy.recorder import REDIS_DOWN, Exchange
from proxy.sessions import session_identity
from proxy.state import ProxyState
from proxy.upstream import Upstream, UpstreamResponse, relay_headers

log = structlog.get_logger("proxy.responses")

# what the recorded request keeps besides its messages and tools: the sampling and output settings
_NOT_PARAMS = frozenset({"input", "instructions", "tools", "model", "messages", "previous_response_id", "conversation"})


async def _conversation(state: ProxyState, body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(the conversation through this request's input, instructions left out; the session it continues).

    The conversation is None when it cannot be known: input that is not items (the upstream answers
    that), or an earlier part the proxy never recorded.
    """
    try:
        new = items.to_messages(body.get("input", []))
    except ValueError:
        return None, None
    if body.get("conversation") is not None:  # kept by the upstream, not seen by the proxy
        return None, None
    previous = body.get("previous_response_id")
    if previous is None:
        return new, None
    if not isinstance(previous, str) or not previous:
        return None, None
    # the response it continues may still be on its way to Redis: let it land first
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.recorder.barrier(), 0.25)
    try:
        context = await state.store.response_context(previous)
    except REDIS_DOWN as exc:
        log.info("response_context_unavailable", error=repr(exc))
        return None, None
    if context is None:
        log.info("response_context_unknown", previous_response_id=previous)
        return None, None
    return [*context.messages, *new], context.session_id


async def responses(request: Request) -> Response:
    state: ProxyState = request.state.proxy
    settings = state.settings
    t0 = time.perf_counter()
    started_at = time.time()
    fields: dict[str, Any] = request.scope.setdefault("nextstate.log", {})
    controls: dict[bytes, str] = {}
    forwarded = forward_headers(request.scope["headers"], settings.upstream_api_key, controls)
    try:
        raw = await read_body(request, settings.max_body_bytes)
        if (encoding := controls.get(b"content-encoding")) is not None:
            raw = decode_body(raw, encoding, settings.max_body_bytes)
        body = parse_json_object(raw)
        record = recorded(settings, controls)
        conversation, continued = await _conversation(state, body) if record else (None, None)
        instructions = body.get("instructions")
        system = [{"role": "system", "content": instructions}] if isinstance(instructions, str) and instructions else []
        messages = [*system, *(conversation or [])]
        record = record and conversation is not None and any(m["role"] != "system" for m in messages)
        named, routing_key = session_identity(controls.get(b"x-session-id"), body.get("user"), messages)
        session_id = named or continued or ""
        if continued and not named:
            routing_key = continued

        async def send(model: str | None) -> tuple[UpstreamResponse, bool]:
            return await state.upstream.request(
                "POST", "/responses", body=forward_body(raw, body, model=model, capture=False), headers=forwarded,
            ), False

        session_id, decision, model, response, _, t_up, t_headers = await forward_routed(
            state, controls, body, messages, record, session_id, routing_key, send)
    except ProxyError as exc:
        fields.update(error=exc.code or exc.type)
        return error_response(exc)

    turn_id = new_id()
    out_headers = {"x-nextstate-session-id": header_value(session_id).decode("latin-1"),
                   "x-nextstate-arm": decision.arm}
    if record:
        out_headers["x-nextstate-turn-id"] = turn_id
    if decision.version:
        out_headers["x-nextstate-version"] = decision.version
    fields.update(session_id=session_id, turn_id=turn_id if record else None, arm=decision.arm,
                  version=decision.version, upstream_status=response.status)
    exchange = Exchange(
        turn_id=turn_id, session_id=session_id, stream=bool(body.get("stream")), decision=decision,
        body={"model": body.get("model"), "messages": messages, "tools": items.chat_tools(body.get("tools")),
              **{k: v for k, v in body.items() if k not in _NOT_PARAMS}},
        upstream_model=model or body.get("model"), started_at=started_at, chained=not named,
        done=closes_session(controls),
        client_key_hash=key_hash(controls.get(b"authorization")), api="responses", instructions=len(system),
    )
    content_type = response.headers.get("content-type", "application/json")
    if response.status >= 400 or "text/event-stream" not in content_type:
        try:
            data = await Upstream.read(response)
        except ProxyError as exc:
            count_broken(state, decision.version)
            return error_response(exc, out_headers)
        upstream_s = time.perf_counter() - t_up
        overhead_s = time.perf_counter() - t0 - upstream_s
        state.metrics.overhead.labels("responses").observe(overhead_s)
        fields.update(overhead_ms=round(overhead_s * 1000, 3), upstream_ms=round(upstream_s * 1000, 3))
        if record and response.status < 400:
            exchange.completion, exchange.stream = data, False
            exchange.timings.upstream_ms = upstream_s * 1000
            exchange.timings.overhead_ms = overhead_s * 1000
            exchange.timings.total_ms = (time.perf_counter() - t0) * 1000
            state.recorder.submit(exchange)
        out_headers["x-nextstate-overhead-ms"] = f"{overhead_s * 1000:.3f}"
        return relay_headers(response, Response(data, status_code=response.status, media_type=content_type,
                                                headers=out_headers))

    before_s = (t_up - t0) + (time.perf_counter() - t_headers)
    streaming = StreamingResponse(
        relay(state, response, exchange, client_wants(body), False, record, t0, t_up, before_s, fields,
              endpoint="responses"),
        status_code=response.status, media_type=content_type,
        headers={**out_headers, "x-nextstate-overhead-ms": f"{before_s * 1000:.3f}", "cache-control": "no-cache"},
    )
    return relay_headers(response, streaming)

