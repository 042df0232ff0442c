"""``POST /v1/chat/completions``: the hot path — route, forward, stream back, hand off to the recorder.

An adapter over the forwarding core (proxy.forward). Only what routing and sessions need is decided
here; parsing the answer into a record happens in the recorder after the response has been sent. The
request body is forwarded as the client's bytes unless routing or capture must change it (see
proxy.capture).
"""

from __future__ import annotations

import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope

from proxy.body import ClientGone, parse_chat
from proxy.capture import client_wants, forward_body
from proxy.errors import ProxyError
from proxy.forward import Flight, Reply
from proxy.headers import check_user, key_hash, session_header
from proxy.recorder import Exchange
from proxy.sessions import session_identity
from proxy.turn import closes_session, flight_scope, forward_routed, mark_turn, recorded
from proxy.upstream import Upstream

__all__ = ["ClientGone", "chat_completions"]

log = structlog.get_logger("proxy.chat")


async def _send_upstream(flight: Flight, raw: bytes, body: dict, model: str | None, record: bool) -> bool:
    """Forward the request; if the upstream refuses the capture fields, retry once without them.

    Returns whether the answer carries captured fields.
    """
    state = flight.state
    capture = record and state.settings.capture_tokens and state.capture_supported is not False
    response = await flight.request("POST", "/chat/completions", forward_body(raw, body, model=model, capture=capture))
    if capture and response.status in (400, 422):
        refused = await Upstream.read(response)
        retry = await flight.request("POST", "/chat/completions", forward_body(raw, body, model=model, capture=False))
        if retry.status < 400:
            state.capture_supported = False
            state.metrics.capture.set(0)
            log.warning("upstream_refuses_capture", status=response.status, body=refused[:300].decode("utf-8", "replace"))
        return False
    if capture and response.status < 400 and state.capture_supported is None:
        state.capture_supported = True
        state.metrics.capture.set(1)
    return capture


async def chat_completions(scope: Scope, receive: Receive) -> Reply | Response:
    """``POST /v1/chat/completions`` as an answer to send: a ``Reply``, a streaming response or an error.

    Reads the ASGI scope and body directly (no Starlette request); raises ``ClientGone`` when the client
    left before its body arrived.
    """
    flight = Flight.start(scope, "chat")
    controls = flight.controls
    try:
        raw = await flight.read(receive)
        body = parse_chat(raw, flight.limits)
        messages = body["messages"]
        check_user(body.get("user"))
        record = recorded(flight.state.settings, controls)
        scope = flight_scope(flight, body)
        session_id, routing_key = session_identity(session_header(controls.get(b"x-session-id")), body.get("user"),
                                                   messages, scope)
        fingerprinted = not session_id
        session_id, model, captured = await forward_routed(
            flight, body, messages, record, session_id, routing_key, scope,
            lambda model: _send_upstream(flight, raw, body, model, record))
    except ProxyError as exc:
        return flight.refuse(exc)

    turn_id = mark_turn(flight, session_id, record)
    wants = client_wants(body)
    if captured and not wants.everything:
        flight.rewrite = wants
    if record:
        assert flight.decision is not None
        flight.exchange = Exchange(
            turn_id=turn_id, session_id=session_id, body=body, stream=bool(body.get("stream")),
            decision=flight.decision, upstream_model=model or body.get("model"), started_at=flight.clock.started_at,
            chained=fingerprinted, done=closes_session(controls), client_key_hash=key_hash(controls.get(b"authorization")),
        )
    return await flight.answer()
