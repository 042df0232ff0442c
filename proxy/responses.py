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
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from proxy import items
from proxy.body import check_messages, check_model, check_tools, parse_json_object
from proxy.capture import forward_body
from proxy.errors import ProxyError
from proxy.forward import Flight, Reply
from proxy.headers import check_user, key_hash, session_header
from proxy.recorder import REDIS_DOWN, Exchange
from proxy.sessions import session_identity
from proxy.state import ProxyState
from proxy.turn import closes_session, flight_scope, forward_routed, mark_turn, recorded

log = structlog.get_logger("proxy.responses")

# what the recorded request keeps besides its messages and tools: the sampling and output settings
_NOT_PARAMS = frozenset({"input", "instructions", "tools", "model", "messages", "previous_response_id", "conversation"})


async def _conversation(state: ProxyState, body: dict[str, Any],
                        scope: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(the conversation through this request's input, instructions left out; the session it continues).

    The conversation is None when it cannot be known: input that is not items (the upstream answers
    that), or an earlier part the proxy never recorded in this learning ``scope`` (a response of another
    scope's conversation is never continued into this one's records).
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
    if context is None or context.scope != scope:
        log.info("response_context_unknown", previous_response_id=previous)
        return None, None
    return [*context.messages, *new], context.session_id


async def responses(request: Request) -> Reply | Response:
    flight = Flight.start(request.scope, "responses")
    controls = flight.controls
    try:
        raw = await flight.read(request.receive)
        body = parse_json_object(raw, flight.limits.json_depth)
        if isinstance(body.get("input"), list):
            check_messages(body["input"], flight.limits, param="input")
        check_tools(body, flight.limits)
        check_model(body)
        check_user(body.get("user"))
        record = recorded(flight.state.settings, controls)
        scope = flight_scope(flight, body)
        conversation, continued = await _conversation(flight.state, body, scope) if record else (None, None)
        instructions = body.get("instructions")
        system = [{"role": "system", "content": instructions}] if isinstance(instructions, str) and instructions else []
        messages = [*system, *(conversation or [])]
        record = record and conversation is not None and any(m["role"] != "system" for m in messages)
        named, routing_key = session_identity(session_header(controls.get(b"x-session-id")), body.get("user"),
                                              messages, scope)
        session_id = named or continued or ""
        if continued and not named:
            routing_key = continued
        session_id, model, _ = await forward_routed(
            flight, body, messages, record, session_id, routing_key, scope,
            lambda model: flight.request("POST", "/responses", forward_body(raw, body, model=model, capture=False)))
    except ProxyError as exc:
        return flight.refuse(exc)

    turn_id = mark_turn(flight, session_id, record)
    if record:
        assert flight.decision is not None
        flight.exchange = Exchange(
            turn_id=turn_id, session_id=session_id, stream=bool(body.get("stream")), decision=flight.decision,
            body={"model": body.get("model"), "messages": messages, "tools": items.chat_tools(body.get("tools")),
                  **{k: v for k, v in body.items() if k not in _NOT_PARAMS}},
            upstream_model=model or body.get("model"), started_at=flight.clock.started_at, chained=not named,
            done=closes_session(controls), client_key_hash=key_hash(controls.get(b"authorization")),
            api="responses", instructions=len(system),
        )
    return await flight.answer()
