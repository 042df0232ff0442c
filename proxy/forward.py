"""The forwarding core: one request's flight from the client to the upstream and back.

A ``Flight`` carries what one request takes through the proxy — its controls, the headers for the
upstream (proxy.headers), its clock, the upstream's answer, the turn to record and the canonical log
fields — and does the steps every endpoint shares: read the body within its bounds (proxy.body), send
it upstream, and relay the answer whole or as it streams, handing the timings, the metrics and the
record off at the end. Chat completions, the Responses API and the pass-through are adapters over it
(proxy.chat, proxy.responses, proxy.routes); what they decide stays in pure functions.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from proxy import fastjson
from proxy.access import CLIENT, ClientKey
from proxy.accumulate import SSESplitter, event_data
from proxy.body import Limits, decode_body, receive_body
from proxy.capture import Wants, strip, strip_copy
from proxy.errors import ProxyError, error_body, error_response
from proxy.headers import forward_headers, relayed
from proxy.recorder import Exchange
from proxy.records import outcome_field
from proxy.routing import Decision
from proxy.state import ProxyState
from proxy.upstream import HTTPError, Upstream, UpstreamResponse

log = structlog.get_logger("proxy.forward")

T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    """A whole answer to send: status, raw headers, body (the hot path's response, without a Response object)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


@dataclass
class Clock:
    """One request's times (``perf_counter`` seconds) and the proxy's own share of them."""

    t0: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)
    """Wall-clock arrival (for the record)."""
    t_up: float = 0.0
    """The request left for the upstream."""
    t_headers: float = 0.0
    """The upstream's status and headers arrived."""
    first: float | None = None
    """The first body chunk of a streamed answer arrived."""
    own_s: float = 0.0
    """The proxy's own time (everything but waiting for the upstream)."""


def limits(state: ProxyState) -> Limits:
    settings = state.settings
    return Limits(body_bytes=settings.max_body_bytes, json_depth=settings.max_json_depth,
                  messages=settings.max_messages, message_chars=settings.max_message_chars, tools=settings.max_tools)


def outcomes(status: int | None) -> tuple[str, ...]:
    """How an upstream answer (``None``: none came) counts for the version it was routed to: a 5xx or no
    answer is an error, and so is a 404 — the version's adapter is missing upstream (a restarted server)."""
    if status is None or status >= 500:
        return ("error",)
    return ("error", "missing") if status == 404 else ("ok",)


@dataclass
class Flight:
    """One request in flight: what it carries from arrival to the last byte relayed."""

    state: ProxyState
    endpoint: str
    """Metrics label of the endpoint (``chat``, ``responses``, ``passthrough``)."""
    headers: list[tuple[bytes, bytes]]
    """The client's headers as they go upstream."""
    controls: dict[bytes, str]
    """The first value of each header the proxy itself reads."""
    fields: dict[str, Any]
    """The canonical log line's fields (proxy.middleware.CanonicalLog writes them)."""
    client: ClientKey | None = None
    """The client key the request came with, when the proxy checks keys (``proxy.access``)."""
    clock: Clock = field(default_factory=Clock)
    response: UpstreamResponse | None = None
    decision: Decision | None = None
    """Where routing sent it (chat and Responses), for the canary's per-version outcomes."""
    own_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    """The proxy's own response headers (session, turn, arm, version)."""
    exchange: Exchange | None = None
    """The turn to record once the answer has been relayed; None when nothing is recorded."""
    rewrite: Wants | None = None
    """Set when the answer carries capture fields the client did not ask for (stripped on the way back)."""
    stream_unsized: bool = False
    """Relay an answer of unknown length as it arrives (the pass-through), not only an event stream."""

    @classmethod
    def start(cls, scope: Scope, endpoint: str, *, as_sent: bool = False) -> Flight:
        """A flight for the request of ``scope``; ``as_sent``: its body goes upstream with its own content type."""
        state: ProxyState = scope["state"]["proxy"]
        controls: dict[bytes, str] = {}
        client: ClientKey | None = scope.get(CLIENT)
        headers = forward_headers(scope["headers"], state.settings.upstream_api_key, controls, as_sent=as_sent,
                                  own_key=client is not None)
        return cls(state, endpoint, headers, controls, scope.setdefault("nextstate.log", {}), client)

    @functools.cached_property
    def limits(self) -> Limits:
        return limits(self.state)

    async def read(self, receive: Receive, *, decode: bool = True) -> bytes:
        """The request body within ``max_body_bytes``, decoded from its ``Content-Encoding`` when ``decode``."""
        limit = self.state.settings.max_body_bytes
        raw = await receive_body(receive, self.controls.get(b"content-length"), limit)
        if decode and (encoding := self.controls.get(b"content-encoding")) is not None:
            raw = decode_body(raw, encoding, limit)
        return raw

    async def request(self, method: str, path: str, body: bytes | None) -> UpstreamResponse:
        """Send the request upstream with this flight's headers; its answer becomes ``response``."""
        self.response = await self.state.upstream.request(method, path, body=body, headers=self.headers)
        return self.response

    async def send(self, call: Awaitable[T]) -> T:
        """Await ``call`` (which sends upstream through ``request``), timed and counted for the routed version."""
        self.clock.t_up = time.perf_counter()
        try:
            result = await call
        except ProxyError:
            self._count(None)
            raise
        assert self.response is not None
        self._count(self.response.status)
        self.clock.t_headers = time.perf_counter()
        return result

    def _count(self, status: int | None) -> None:
        if self.decision is not None and self.decision.version:
            version = outcome_field(self.decision.version_scope, self.decision.version)
            for name in outcomes(status):
                self.state.outcomes[f"{version}:{name}"] += 1

    def _broken(self) -> None:
        """An answer that began (counted ok at its headers) and broke off: it counts as an error instead."""
        counted_ok = self.response is not None and outcomes(self.response.status) == ("ok",)
        if counted_ok and self.decision is not None and self.decision.version:
            version = outcome_field(self.decision.version_scope, self.decision.version)
            self.state.outcomes[f"{version}:ok"] -= 1
            self.state.outcomes[f"{version}:error"] += 1

    def refuse(self, exc: ProxyError) -> Response:
        """The OpenAI-shaped error for ``exc``, with the proxy's own headers so far."""
        self.fields.update(error=exc.code or exc.type)
        own = {name.decode(): value.decode("latin-1") for name, value in self.own_headers} or None
        return error_response(exc, own)

    async def answer(self) -> Reply | Response:
        """The upstream's answer for the client: relayed as it streams, or read whole (then recorded)."""
        response = self.response
        assert response is not None
        content_type = response.headers.get("content-type", "application/json")
        if response.status < 400 and ("text/event-stream" in content_type
                                      or (self.stream_unsized and "content-length" not in response.headers)):
            return self._streaming(response, content_type)
        try:
            data = await Upstream.read(response)
        except ProxyError as exc:
            self._broken()
            return self.refuse(exc)
        clock = self.clock
        upstream_s = time.perf_counter() - clock.t_up
        exchange = self.exchange if response.status < 400 else None
        if exchange is not None:
            exchange.completion, exchange.stream = data, False  # an upstream may answer a stream request whole
        if self.rewrite is not None and response.status < 400:
            with contextlib.suppress(ValueError):
                parsed = fastjson.loads(data)
                if exchange is not None:
                    exchange.parsed = parsed  # parsed once: the recorder reuses it
                data = fastjson.dumps(strip_copy(parsed, self.rewrite))
        clock.own_s = time.perf_counter() - clock.t0 - upstream_s
        self.state.metrics.overhead.labels(self.endpoint).observe(clock.own_s)
        self.fields.update(overhead_ms=round(clock.own_s * 1000, 3), upstream_ms=round(upstream_s * 1000, 3))
        if exchange is not None:
            self._record(exchange, time.perf_counter() - clock.t0, upstream_s)
        headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", b"%d" % len(data)),
                   *self.own_headers, (b"x-nextstate-overhead-ms", b"%.3f" % (clock.own_s * 1000))]
        headers += relayed(response, headers)
        return Reply(response.status, headers, data)

    def _record(self, exchange: Exchange, total_s: float, upstream_s: float) -> None:
        exchange.timings.total_ms = total_s * 1000
        exchange.timings.upstream_ms = upstream_s * 1000
        exchange.timings.overhead_ms = self.clock.own_s * 1000
        if self.clock.first is not None:
            exchange.timings.ttft_ms = (self.clock.first - self.clock.t_up) * 1000
        # only a queue put: the recorder task runs once the response has been written, and queueing
        # now keeps the order with the client's next request
        self.state.recorder.submit(exchange)

    def _streaming(self, response: UpstreamResponse, content_type: str) -> StreamingResponse:
        clock = self.clock
        clock.own_s = (clock.t_up - clock.t0) + (time.perf_counter() - clock.t_headers)
        streaming = StreamingResponse(self._relay(response), status_code=response.status, media_type=content_type)
        streaming.raw_headers += [*self.own_headers, (b"x-nextstate-overhead-ms", b"%.3f" % (clock.own_s * 1000))]
        if "text/event-stream" in content_type:
            streaming.raw_headers.append((b"cache-control", b"no-cache"))
        streaming.raw_headers += relayed(response, streaming.raw_headers)
        return streaming

    async def _relay(self, response: UpstreamResponse) -> AsyncIterator[bytes]:
        """Pass the body through as it arrives; keep the raw chunks for the recorder."""
        clock, exchange, wants = self.clock, self.exchange, self.rewrite
        splitter = SSESplitter() if wants is not None else None
        completed = False
        try:
            async with response:
                async for data in Upstream.iter_chunks(response):
                    t_chunk = time.perf_counter()
                    if clock.first is None:
                        clock.first = t_chunk
                    if exchange is not None:
                        exchange.chunks.append(data)
                    if splitter is not None:
                        data = b"".join(_rewrite_event(event, wants) for event in splitter.feed(data))  # type: ignore[arg-type]
                    clock.own_s += time.perf_counter() - t_chunk
                    if data:
                        yield data
                rest = splitter.rest() if splitter is not None else b""
                if rest.strip():
                    yield _rewrite_event(rest, wants)  # type: ignore[arg-type]
                completed = True
        except HTTPError as exc:
            log.warning("upstream_stream_broken", error=repr(exc))
            self.fields.update(error="upstream_stream_broken")
            self._broken()
            yield b"data: " + error_body("upstream stream broken", "upstream_error", code="upstream_stream_broken") + b"\n\n"
        finally:
            if not completed:
                self.fields.setdefault("error", "client_disconnected")
            total_s = time.perf_counter() - clock.t0
            self.fields.update(overhead_ms=round(clock.own_s * 1000, 3), stream=True)
            self.state.metrics.overhead.labels(self.endpoint).observe(clock.own_s)
            if completed and exchange is not None:
                self._record(exchange, total_s, total_s - clock.own_s)


def _rewrite_event(event: bytes, wants: Wants) -> bytes:
    data = event_data(event)
    if data is None or data.strip() == b"[DONE]":
        return event + b"\n\n"
    try:
        chunk = fastjson.loads(data)
    except ValueError:
        return event + b"\n\n"
    return b"data: " + fastjson.dumps(strip(chunk, wants)) + b"\n\n"
