"""Pure-ASGI middleware: the canonical request log line with metrics, and the admin token guard."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.errors import NotFound, Unauthorized, error_response
from proxy.metrics import Metrics

log = structlog.get_logger("proxy.request")

_QUIET = frozenset({"/healthz", "/readyz", "/metrics"})


class CanonicalLog:
    """One log line per request (method, path, status, duration and what handlers added), and metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: set[str], prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths
        self.prefixes = prefixes
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}  # labelled metrics, looked up once

    def _observe(self, route: str, status: str, duration: float, fields: dict[str, Any]) -> None:
        key = (route, status)
        if (pair := self._children.get(key)) is None:
            pair = self._children[key] = (self.metrics.requests.labels(route, status), self.metrics.latency.labels(route))
        pair[0].inc()
        pair[1].observe(duration)
        if "arm" in fields:  # a routed chat request: per-arm/version figures for the canary
            key = (fields["arm"], fields.get("version") or "base", status)
            if (pair := self._children.get(key)) is None:
                pair = self._children[key] = (self.metrics.policy_requests.labels(*key),
                                              self.metrics.policy_latency.labels(*key[:2]))
            pair[0].inc()
            pair[1].observe(duration)

    def _route(self, path: str) -> str:
        """A bounded metric label for a path (unknown paths share one label)."""
        if path in self.paths:
            return path
        for prefix in self.prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return prefix
        return "/v1/*" if path.startswith("/v1/") else "other"  # sent on to the upstream as it came

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        fields: dict[str, Any] = {}
        scope["nextstate.log"] = fields
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            duration = time.perf_counter() - start
            path = scope["path"]
            self._observe(self._route(path), str(status), duration, fields)
            if path not in _QUIET:
                log.info("request", method=scope["method"], path=path, status=status,
                         duration_ms=round(duration * 1000, 3), **fields)


class AdminGuard:
    """Mounted admin apps: 404 when no admin token is configured, 401 without the right token.

    The token is accepted as ``Authorization: Bearer <token>`` (API clients) or as the password of
    HTTP Basic auth with any user name, so a browser can open the dashboard through its own prompt or
    as ``http://user:<token>@host/dashboard/``. Digests of the two are compared, in constant time (so
    neither the token's content nor its length shows in the time taken).
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.digest = hashlib.sha256(token.encode()).digest() if token else None

    def _allowed(self, given: bytes) -> bool:
        assert self.digest is not None
        scheme, _, credential = given.strip().partition(b" ")
        if scheme.lower() == b"basic":
            try:
                _, _, credential = base64.b64decode(credential.strip(), validate=True).partition(b":")
            except (ValueError, binascii.Error):
                return False
        elif scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(hashlib.sha256(credential.strip()).digest(), self.digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.digest is None:
            await error_response(NotFound("not found (admin routes are disabled)"))(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        if not self._allowed(given):
            response = error_response(Unauthorized("missing or wrong admin token"),
                                      headers={"www-authenticate": 'Basic realm="nextstate admin"'})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
