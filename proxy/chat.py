"""``POST /v1/chat/completions``: the hot path — route, forward, stream back, hand off to the recorder.

Only what routing and sessions need is decided here; parsing the answer into a record happens in the
recorder after the response has been sent. The request body is forwarded as the client's bytes
unless routing or capture must change it (see proxy.capture).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

import redis
import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from proxy import fastjson
from proxy.accumulate import SSESplitter, event_data
from proxy.capture import Wants, client_wants, forward_body, strip, strip_copy
from proxy.errors import BadRequest, BodyTooLarge, ProxyError, UnsupportedEncoding, error_body, error_response
from proxy.ids import new_id
from proxy.recorder import Exchange
from proxy.records import outcome_field
from proxy.routing import Decision, route
from proxy.scopes import parse_sources, request_scope
from proxy.sessions import last_assistant_index, message_digest, opening_fingerprint, session_identity
from proxy.settings import ProxySettings
from proxy.state import ProxyState
from proxy.upstream import HTTPError, Upstream, UpstreamResponse, relay_headers, relayed

log = structlog.get_logger("proxy.chat")

_OFF = frozenset({"off", "0", "false", "no"})
_TRUE = frozenset({"1", "true", "yes", "on"})


class ClientGone(Exception):
    """The client closed its connection before its request body had arrived (nothing to answer)."""


async def receive_body(receive: Receive, declared: bytes | str | None, limit: int) -> bytes:
    """The request body from ASGI ``receive``, refused with 413 past ``limit`` bytes (declared or sent)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is larger than {limit} bytes")
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):  # the usual case: the whole body in one message
        if message["type"] == "http.disconnect":
            raise ClientGone
        if len(body) > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes")
        return body
    parts, size = [body], len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes")
        parts.append(part)
    return b"".join(parts)


async def read_body(request: Request, limit: int) -> bytes:
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


def decode_body(raw: bytes, encoding: str, limit: int) -> bytes:
    """A request body sent with ``Content-Encoding`` (gzip or deflate), decoded; still at most ``limit`` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedEncoding(f"request bodies encoded as {encoding!r} are not supported (gzip, deflate)")
    # gzip has its header; deflate is zlib-wrapped by the standard, raw from some clients
    attempts = (16 + zlib.MAX_WBITS,) if encoding != "deflate" else (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    for wbits in attempts:
        decoder = zlib.decompressobj(wbits)
        try:
            data = decoder.decompress(raw, limit + 1)
        except zlib.error:
            continue
        if len(data) > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes once decoded")
        if decoder.eof:
            return data
    raise BadRequest(f"request body is not valid {encoding} data")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = fastjson.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def parse_chat(raw: bytes) -> dict[str, Any]:
    body = parse_json_object(raw)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array of messages", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{index}] must be an object with a 'role'", param=f"messages.[{index}]")
    return body


def key_hash(authorization: str | None) -> str | None:
    """A short sha256 of the client's key, never the key itself."""
    if not authorization:
        return None
    token = authorization.split(" ", 1)[-1].strip()
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else None


# not forwarded: hop-by-hop headers, what describes the proxy's own connection or body, the proxy's controls
_NOT_FORWARDED = frozenset({
    b"connection", b"keep-alive", b"proxy-authorization", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"host", b"content-length", b"content-type", b"content-encoding",
    b"accept-encoding", b"expect",
    b"cookie", b"x-session-id", b"x-turn-type", b"x-session-done",
})
# the client's credentials, replaced by NEXTSTATE_UPSTREAM_API_KEY when that is set
_CREDENTIALS = frozenset({b"authorization", b"api-key", b"x-api-key"})
# the request headers the chat handler reads (collected while the others are picked for the upstream)
_CONTROLS = frozenset({
    b"content-length", b"content-encoding", b"authorization", b"x-session-id", b"x-turn-type", b"x-session-done",
    b"x-nextstate-record", b"x-nextstate-policy", b"x-nextstate-canary", b"x-nextstate-scope",
})
_JSON = (b"content-type", b"application/json")
_BODY_TYPE = frozenset({b"content-type", b"content-encoding"})


def forward_headers(raw: Iterable[tuple[bytes, bytes]], api_key: str | None,
                    controls: dict[bytes, str] | None = None, *, as_sent: bool = False) -> list[tuple[bytes, bytes]]:
    """The client's end-to-end headers (auth, organisation, provider-specific ones) for the upstream, JSON
    content type first; in the same pass the first value of each of the proxy's controls goes into ``controls``.

    ``as_sent``: the body goes upstream as the client sent it, so its own content type and encoding go too.
    """
    out = [] if as_sent else [_JSON]
    for name, value in raw:
        if controls is not None and name in _CONTROLS and name not in controls:
            controls[name] = value.decode("latin-1")
        if as_sent and name in _BODY_TYPE:
            out.append((name, value))
            continue
        if name in _NOT_FORWARDED or name.startswith(b"x-nextstate-") or (api_key and name in _CREDENTIALS):
            continue
        out.append((name, value))
    if api_key:
        out.append((b"authorization", f"Bearer {api_key}".encode("latin-1")))
    return out


def upstream_headers(request: Request, api_key: str | None, *, as_sent: bool = False) -> list[tuple[bytes, bytes]]:
    return forward_headers(request.scope["headers"], api_key, as_sent=as_sent)


_UNSAFE_IN_HEADER = re.compile(r"[^\x20-\x7e\x80-\xff\t]")


def header_value(text: str) -> bytes:
    """``text`` as a response header value; percent-encoded when it holds what a header cannot (a ``user``
    field with line breaks or characters beyond Latin-1)."""
    if _UNSAFE_IN_HEADER.search(text):
        return quote(text, safe="").encode()
    return text.encode("latin-1")


def fingerprint_session(state: ProxyState, messages: list[dict[str, Any]],
                        record: bool) -> tuple[str, str | None, asyncio.Future[str] | None]:
    """For a request that names no session: (its session id, or "" while ``lookup`` finds it as the
    upstream works; the routing key, only when a canary slice needs one; the lookup)."""
    table = state.routing.table
    routing_key = opening_fingerprint(messages) if table is not None and table.has_canary() else None
    index = last_assistant_index(messages)
    if record and index is not None:
        return "", routing_key, asyncio.ensure_future(find_session(state, messages[: index + 1]))
    return f"fp-{new_id()}", routing_key, None


def recorded(settings: ProxySettings, controls: dict[bytes, str]) -> bool:
    """Is this request a main turn to record (recording on, not opted out, not a side turn)?"""
    return (
        settings.record
        and controls.get(b"x-nextstate-record", "on").strip().lower() not in _OFF
        and controls.get(b"x-turn-type", "main").strip().lower() != "side"
    )


def closes_session(controls: dict[bytes, str]) -> bool:
    return controls.get(b"x-session-done", "").strip().lower() in _TRUE


async def find_session(state: ProxyState, history: list[dict[str, Any]]) -> str:
    """Session of a request that names none: the session whose last turn ``history`` continues."""
    # the previous turn of this conversation may still be on its way to Redis: let it land first
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.recorder.barrier(), 0.25)
    try:
        found = await state.store.find_session([message_digest(m) for m in history])
        if found:
            return found
    except (redis.RedisError, OSError) as exc:  # serving goes on; this turn starts a new session
        log.info("session_lookup_failed", error=repr(exc))
    return f"fp-{new_id()}"


def decide(state: ProxyState, controls: dict[bytes, str], body: dict[str, Any],
           routing_key: str | None) -> tuple[Decision, str | None]:
    """Where a request goes (arm, version) and the model name to ask the upstream for."""
    settings = state.settings
    scope = request_scope(parse_sources(settings.scope_by), settings.scope_unkeyed,
                          header=controls.get(b"x-nextstate-scope"), key_hash=key_hash(controls.get(b"authorization")),
                          user=body.get("user"))
    decision = route(
        state.routing.table, pin_header=controls.get(b"x-nextstate-policy"),
        canary_header=controls.get(b"x-nextstate-canary"), requested_model=body.get("model"),
        session_key=routing_key or "", scope=scope,
    )
    return decision, decision.upstream_model or state.settings.upstream_model


def count_outcome(state: ProxyState, decision: Decision, status: int | None) -> None:
    """The upstream's answer (``None``: none came) to a request routed to a version: the canary's error rate."""
    if decision.version:
        field = outcome_field(decision.version_scope, decision.version)
        state.outcomes[f"{field}:{'ok' if status is not None and status < 500 else 'error'}"] += 1


@contextlib.contextmanager
def upstream_call(state: ProxyState, decision: Decision, lookup: asyncio.Future[str] | None) -> Iterator[None]:
    """Around the upstream call of a request routed by ``decision``: when it fails, the session lookup
    running beside it is cancelled and a failure without an answer is counted against the version."""
    try:
        yield
    except BaseException as exc:
        if lookup is not None:
            lookup.cancel()
        if isinstance(exc, ProxyError):
            count_outcome(state, decision, None)
        raise


class Forwarded(NamedTuple):
    """A request routed and sent upstream, with its session known and the times it left and was answered."""

    session_id: str
    decision: Decision
    model: str | None
    response: UpstreamResponse
    captured: bool
    t_up: float
    t_headers: float


async def forward_routed(state: ProxyState, controls: dict[bytes, str], body: dict[str, Any],
                         messages: list[dict[str, Any]], record: bool, session_id: str, routing_key: str | None,
                         send: Callable[[str | None], Awaitable[tuple[UpstreamResponse, bool]]]) -> Forwarded:
    """Route a request and ``send`` it to the model chosen; one that names no session (``session_id``
    empty) is matched to the conversation it continues while the upstream works."""
    lookup = None
    if not session_id:
        session_id, routing_key, lookup = fingerprint_session(state, messages, record)
    decision, model = decide(state, controls, body, routing_key)
    t_up = time.perf_counter()
    with upstream_call(state, decision, lookup):
        response, captured = await send(model)
    count_outcome(state, decision, response.status)
    t_headers = time.perf_counter()
    if lookup is not None:
        session_id = await lookup
    return Forwarded(session_id, decision, model, response, captured, t_up, t_headers)


def _rewrite_event(event: bytes, wants: Wants) -> bytes:
    data = event_data(event)
    if data is None or data.strip() == b"[DONE]":
        return event + b"\n\n"
    try:
        chunk = fastjson.loads(data)
    except ValueError:
        return event + b"\n\n"
    return b"data: " + fastjson.dumps(strip(chunk, wants)) + b"\n\n"


async def _send_upstream(state: ProxyState, raw: bytes, body: dict[str, Any], model: str | None,
                         headers: list[tuple[bytes, bytes]], record: bool) -> tuple[UpstreamResponse, bool]:
    """Forward the request; if the upstream refuses the capture fields, retry once without them."""
    capture = record and state.settings.capture_tokens and state.capture_supported is not False
    response = await state.upstream.request(
        "POST", "/chat/completions", body=forward_body(raw, body, model=model, capture=capture), headers=headers,
    )
    if capture and response.status in (400, 422):
        refused = await Upstream.read(response)
        retry = await state.upstream.request(
            "POST", "/chat/completions", body=forward_body(raw, body, model=model, capture=False), headers=headers,
        )
        if retry.status < 400:
            state.capture_supported = False
            state.metrics.capture.set(0)
            log.warning("upstream_refuses_capture", status=response.status, body=refused[:300].decode("utf-8", "replace"))
        return retry, False
    if capture and response.status < 400 and state.capture_supported is None:
        state.capture_supported = True
        state.metrics.capture.set(1)
    return response, capture


@dataclass(frozen=True)
class Reply:
    """A whole answer to send: status, raw headers, body (the hot path's response, without a Response object)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


async def chat_completions(scope: Scope, receive: Receive) -> Reply | Response:
    """``POST /v1/chat/completions`` as an answer to send: a ``Reply``, a streaming response or an error.

    Reads the ASGI scope and body directly (no Starlette request); raises ``ClientGone`` when the client
    left before its body arrived.
    """
    state: ProxyState = scope["state"]["proxy"]
    settings = state.settings
    t0 = time.perf_counter()
    started_at = time.time()
    fields: dict[str, Any] = scope.setdefault("nextstate.log", {})
    controls: dict[bytes, str] = {}
    forwarded = forward_headers(scope["headers"], settings.upstream_api_key, controls)
    try:
        raw = await receive_body(receive, controls.get(b"content-length"), settings.max_body_bytes)
        if (encoding := controls.get(b"content-encoding")) is not None:
            raw = decode_body(raw, encoding, settings.max_body_bytes)
        body = parse_chat(raw)
        messages: list[dict[str, Any]] = body["messages"]
        record = recorded(settings, controls)
        session_id, routing_key = session_identity(controls.get(b"x-session-id"), body.get("user"), messages)
        fingerprinted = not session_id
        session_id, decision, model, response, captured, t_up, t_headers = await forward_routed(
            state, controls, body, messages, record, session_id, routing_key,
            lambda model: _send_upstream(state, raw, body, model, forwarded, record))
    except ProxyError as exc:
        fields.update(error=exc.code or exc.type)
        return error_response(exc)

    turn_id = new_id()
    out_headers = [(b"x-nextstate-session-id", header_value(session_id)), (b"x-nextstate-arm", decision.arm.encode())]
    if record:
        out_headers.append((b"x-nextstate-turn-id", turn_id.encode()))
    if decision.version:
        out_headers.append((b"x-nextstate-version", decision.version.encode()))
    fields.update(session_id=session_id, turn_id=turn_id if record else None, arm=decision.arm,
                  version=decision.version, upstream_status=response.status)
    wants = client_wants(body)
    content_type = response.headers.get("content-type", "application/json")
    exchange = Exchange(
        turn_id=turn_id, session_id=session_id, body=body, stream=bool(body.get("stream")), decision=decision,
        upstream_model=model or body.get("model"), started_at=started_at, chained=fingerprinted,
        done=closes_session(controls),
        client_key_hash=key_hash(controls.get(b"authorization")),
    )

    if response.status >= 400 or "text/event-stream" not in content_type:
        try:
            data = await Upstream.read(response)
        except ProxyError as exc:
            return error_response(exc, {k.decode(): v.decode("latin-1") for k, v in out_headers})
        upstream_s = time.perf_counter() - t_up
        exchange.completion, exchange.stream = data, False  # an upstream may answer a stream request whole
        if response.status < 400 and captured and not wants.everything:
            with contextlib.suppress(ValueError):
                exchange.parsed = fastjson.loads(data)  # parsed once: the recorder reuses it
                data = fastjson.dumps(strip_copy(exchange.parsed, wants))
        overhead_s = time.perf_counter() - t0 - upstream_s
        state.metrics.overhead.labels("chat").observe(overhead_s)
        fields.update(overhead_ms=round(overhead_s * 1000, 3), upstream_ms=round(upstream_s * 1000, 3))
        if record and response.status < 400:
            exchange.timings.upstream_ms = upstream_s * 1000
            exchange.timings.overhead_ms = overhead_s * 1000
            exchange.timings.total_ms = (time.perf_counter() - t0) * 1000
            # only a queue put: the recorder task runs once the response has been written, and queueing
            # now keeps the order with the client's next request
            state.recorder.submit(exchange)
        headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", b"%d" % len(data)),
                   *out_headers, (b"x-nextstate-overhead-ms", b"%.3f" % (overhead_s * 1000))]
        headers += relayed(response, headers)
        return Reply(response.status, headers, data)

    before_s = (t_up - t0) + (time.perf_counter() - t_headers)
    streaming = StreamingResponse(
        relay(state, response, exchange, wants, captured, record, t0, t_up, before_s, fields),
        status_code=response.status, media_type=content_type,
    )
    streaming.raw_headers += [*out_headers, (b"x-nextstate-overhead-ms", b"%.3f" % (before_s * 1000)),
                              (b"cache-control", b"no-cache")]
    return relay_headers(response, streaming)


async def relay(state: ProxyState, response: UpstreamResponse, exchange: Exchange, wants: Wants,
                 captured: bool, record: bool, t0: float, t_up: float, overhead_s: float,
                 fields: dict[str, Any], endpoint: str = "chat") -> AsyncIterator[bytes]:
    """Pass SSE through as it arrives; keep the raw chunks for the recorder."""
    splitter = SSESplitter() if captured and not wants.everything else None
    completed = False
    first: float | None = None
    try:
        async for data in Upstream.iter_chunks(response):
            if first is None:
                first = time.perf_counter()
            t_chunk = time.perf_counter()
            exchange.chunks.append(data)
            if splitter is not None:
                data = b"".join(_rewrite_event(event, wants) for event in splitter.feed(data))
            overhead_s += time.perf_counter() - t_chunk
            if data:
                yield data
        rest = splitter.rest() if splitter is not None else b""
        if rest.strip():
            yield _rewrite_event(rest, wants)
        completed = True
    except HTTPError as exc:
        log.warning("upstream_stream_broken", error=repr(exc))
        fields.update(error="upstream_stream_broken")
        yield b"data: " + error_body("upstream stream broken", "upstream_error", code="upstream_stream_broken") + b"\n\n"
    finally:
        if completed:
            response.release()
        else:  # the client went away (or the upstream broke): close the upstream request too
            response.close()
            fields.setdefault("error", "client_disconnected")
        total_s = time.perf_counter() - t0
        fields.update(overhead_ms=round(overhead_s * 1000, 3), stream=True)
        state.metrics.overhead.labels(endpoint).observe(overhead_s)
        if completed and record:
            exchange.timings.total_ms = total_s * 1000
            exchange.timings.overhead_ms = overhead_s * 1000
            exchange.timings.upstream_ms = (total_s - overhead_s) * 1000
            exchange.timings.ttft_ms = (first - t_up) * 1000 if first is not None else None
            state.recorder.submit(exchange)
