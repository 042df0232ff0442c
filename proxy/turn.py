"""A turn's way through routing, shared by chat completions and the Responses API: whether it is recorded,
which session it belongs to (named, or found by the history it continues while the upstream works),
which arm and model serve it, and the headers that tell the client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from proxy.access import ClientKey
from proxy.forward import Flight
from proxy.headers import header_value, key_hash
from proxy.ids import new_id
from proxy.recorder import REDIS_DOWN
from proxy.routing import Decision, route
from proxy.scopes import resolve_scope
from proxy.sessions import last_assistant_index, message_digest, opening_fingerprint
from proxy.settings import ProxySettings
from proxy.state import ProxyState

log = structlog.get_logger("proxy.turn")

T = TypeVar("T")
_OFF = frozenset({"off", "0", "false", "no"})
_TRUE = frozenset({"1", "true", "yes", "on"})


def recorded(settings: ProxySettings, controls: dict[bytes, str]) -> bool:
    """Is this request a main turn to record (recording on, not opted out, not a side turn)?"""
    return (
        settings.record
        and controls.get(b"x-nextstate-record", "on").strip().lower() not in _OFF
        and controls.get(b"x-turn-type", "main").strip().lower() != "side"
    )


def closes_session(controls: dict[bytes, str]) -> bool:
    return controls.get(b"x-session-done", "").strip().lower() in _TRUE


def fingerprint_session(state: ProxyState, messages: list[dict[str, Any]], record: bool,
                        scope: str) -> tuple[str, str | None, asyncio.Future[str] | None]:
    """For a request that names no session: (its session id, or "" while ``lookup`` finds it as the
    upstream works; the routing key, only when a canary slice needs one; the lookup)."""
    table = state.routing.table
    routing_key = opening_fingerprint(messages) if table is not None and table.has_canary() else None
    index = last_assistant_index(messages)
    if record and index is not None:
        return "", routing_key, asyncio.ensure_future(find_session(state, messages[: index + 1], scope))
    return f"fp-{new_id()}", routing_key, None


async def find_session(state: ProxyState, history: list[dict[str, Any]], scope: str) -> str:
    """Session of a request that names none: the session of ``scope`` whose last turn ``history`` continues."""
    # the previous turn of this conversation may still be on its way to Redis: let it land first
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.recorder.barrier(), 0.25)
    try:
        found = await state.store.find_session([message_digest(m) for m in history], scope)
        if found:
            return found
    except REDIS_DOWN as exc:  # serving goes on; this turn starts a new session
        log.info("session_lookup_failed", error=repr(exc))
    return f"fp-{new_id()}"


def scope_of(settings: ProxySettings, *, header: str | None, authorization: str | None, user: object,
             client: ClientKey | None) -> str:
    """The learning scope of a request (``proxy.scopes``). A client key configured with a scope
    (``proxy.access``) names it unless an ``X-NextState-Scope`` header the settings trust names another."""
    return resolve_scope(settings.scope_by, settings.scope_unkeyed, header=header, key_hash=key_hash(authorization),
                         user=user, client_scope=client.scope if client is not None else None)


def flight_scope(flight: Flight, body: dict[str, Any]) -> str:
    """The learning scope of a forwarded request."""
    controls = flight.controls
    return scope_of(flight.state.settings, header=controls.get(b"x-nextstate-scope"),
                    authorization=controls.get(b"authorization"), user=body.get("user"), client=flight.client)


def decide(state: ProxyState, controls: dict[bytes, str], body: dict[str, Any],
           routing_key: str | None, scope: str) -> tuple[Decision, str | None]:
    """Where a request of learning ``scope`` goes (arm, version) and the model name to ask the upstream for."""
    decision = route(
        state.routing.table, pin_header=controls.get(b"x-nextstate-policy"),
        canary_header=controls.get(b"x-nextstate-canary"), requested_model=body.get("model"),
        session_key=routing_key or "", scope=scope,
    )
    return decision, decision.upstream_model or state.settings.upstream_model


async def forward_routed(flight: Flight, body: dict[str, Any], messages: list[dict[str, Any]], record: bool,
                         session_id: str, routing_key: str | None, scope: str,
                         send: Callable[[str | None], Awaitable[T]]) -> tuple[str, str | None, T]:
    """Route a turn and ``send`` it to the model chosen: (its session id, that model, what ``send`` gave).

    A turn that names no session (``session_id`` empty) is matched to the conversation it continues
    while the upstream works; the lookup is cancelled when the upstream call fails.
    """
    state = flight.state
    lookup = None
    if not session_id:
        session_id, routing_key, lookup = fingerprint_session(state, messages, record, scope)
    flight.decision, model = decide(state, flight.controls, body, routing_key, scope)
    try:
        result = await flight.send(send(model))
    except BaseException:
        if lookup is not None:
            lookup.cancel()
        raise
    if lookup is not None:
        session_id = await lookup
    return session_id, model, result


def mark_turn(flight: Flight, session_id: str, record: bool) -> str:
    """A new turn id; the turn's session, arm and version (and its id when recorded) in headers and log."""
    decision = flight.decision
    assert decision is not None and flight.response is not None
    turn_id = new_id()
    own = flight.own_headers
    own += [(b"x-nextstate-session-id", header_value(session_id)), (b"x-nextstate-arm", decision.arm.encode())]
    if record:
        own.append((b"x-nextstate-turn-id", turn_id.encode()))
    if decision.version:
        own.append((b"x-nextstate-version", decision.version.encode()))
    flight.fields.update(session_id=session_id, turn_id=turn_id if record else None, arm=decision.arm,
                         version=decision.version, upstream_status=flight.response.status)
    return turn_id
