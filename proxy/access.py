"""Client keys: who may call the API, how often, and whether their requests are recorded.

``NEXTSTATE_API_KEYS`` lists the keys, comma-separated; each is a plain key or ``sha256:<hex>`` (the
hex digest of the key, so the configuration need not hold the secret), optionally followed by
``;``-separated options::

    sk-team-a;rpm=120;scope=team-a, sha256:9f86d08…;rpm=10;burst=5;record=off

``rpm`` (requests per minute, token bucket of ``burst`` tokens, default ``rpm``; unset = the
``NEXTSTATE_API_KEY_RPM`` default, 0 = unlimited), ``record`` (``on``/``off``: a key set to off is
never recorded, whatever its requests say) and ``scope`` (the learning scope its requests default
to). Keys are held as sha256 digests and every configured digest is compared in constant time. With
no keys configured the proxy is open, as before. Limits are shared by every replica through Redis
(``proxy.ratelimit``), per process only while Redis is unreachable.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.errors import ProxyError, RateLimited, Unauthorized, error_response
from proxy.ratelimit import RateLimiter, SharedLimiter
from proxy.scopes import valid_scope

CLIENT = "nextstate.client"
"""The ASGI scope key under which a request carries its ``ClientKey``."""

_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_ON, _OFF = frozenset({"on", "1", "true", "yes"}), frozenset({"off", "0", "false", "no"})


class KeyConfigError(ValueError):
    """``NEXTSTATE_API_KEYS`` cannot be read."""


@dataclass(frozen=True)
class ClientKey:
    """One configured client key and what it is allowed."""

    digest: bytes
    """sha256 of the key."""
    rpm: float = 0.0
    """Requests per minute (0 = unlimited)."""
    burst: float = 0.0
    """Requests allowed at once before the rate applies (0 = ``rpm``)."""
    record: bool = True
    """False: nothing of this key's requests is stored."""
    scope: str | None = None
    """The learning scope this key's requests default to (None = the proxy's default)."""

    @property
    def key_hash(self) -> str:
        """The short hash stored on records (the same as ``client_key_hash`` on a turn)."""
        return self.digest.hex()[:16]


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _option(entry: str, name: str, value: str) -> tuple[str, float | bool | str]:
    if name in {"rpm", "burst"}:
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not math.isfinite(number) or number < 0:
            raise KeyConfigError(f"{name} must be a number >= 0 in {entry!r}")
        return name, number
    if name == "record":
        if value.lower() not in _ON | _OFF:
            raise KeyConfigError(f"record must be on or off in {entry!r}")
        return name, value.lower() in _ON
    if name == "scope":
        if not valid_scope(value):
            raise KeyConfigError(f"scope must be 1-48 lower-case letters, digits or '-' (starting with a letter "
                                 f"or digit) in {entry!r}")
        return name, value
    raise KeyConfigError(f"unknown option {name!r} in a client key (rpm, burst, record, scope)")


def parse_keys(spec: str, default_rpm: float = 0.0) -> list[ClientKey]:
    """The keys of a ``NEXTSTATE_API_KEYS`` value (empty = none)."""
    keys = []
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            continue
        key, *options = [part.strip() for part in entry.split(";")]
        shown = key[:12] + "…" if not key.startswith("sha256:") else key[:16] + "…"
        if key.startswith("sha256:"):
            try:
                digest = bytes.fromhex(key.removeprefix("sha256:"))
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise KeyConfigError(f"{shown}: a sha256: key needs 64 hex digits")
        elif key:
            digest = digest_of(key)
        else:
            raise KeyConfigError("an empty client key")
        values: dict[str, float | bool | str] = {"rpm": default_rpm}
        for option in options:
            name, sep, value = option.partition("=")
            if not sep:
                raise KeyConfigError(f"{shown}: option {option!r} is not name=value")
            name, parsed = _option(shown, name.strip().lower(), value.strip())
            values[name] = parsed
        keys.append(ClientKey(digest=digest, **values))  # type: ignore[arg-type]
    return keys


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a client sent: ``Authorization: Bearer <key>`` (also ``api-key`` / ``x-api-key``)."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in (b"authorization", b"api-key", b"x-api-key") and name not in found:
            found[name] = value
    if auth := found.get(b"authorization"):
        scheme, _, token = auth.decode("latin-1").partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None
    other = found.get(b"api-key") or found.get(b"x-api-key")
    return other.decode("latin-1").strip() or None if other else None


def match(keys: list[ClientKey], given: str | None) -> ClientKey | None:
    """The configured key ``given`` is, comparing against every key in constant time."""
    digest = digest_of(given) if given else b"\0" * 32
    found = None
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        if hmac.compare_digest(key.digest, digest) and given:
            found = key
    return found


class ClientAccess:
    """ASGI middleware: the API needs a configured client key; health, metrics and admin mounts (which
    have their own token) do not. Sets ``scope["nextstate.client"]`` and applies the key's settings."""

    def __init__(self, app: ASGIApp, keys: list[ClientKey], admin_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.keys = keys
        self.admin_prefixes = admin_prefixes
        self.limiter = SharedLimiter(RateLimiter())

    def _open(self, path: str) -> bool:
        if path in _OPEN_PATHS:
            return True
        return any(path == prefix or path.startswith(prefix + "/") for prefix in self.admin_prefixes)

    async def _refuse(self, exc: ProxyError, scope: Scope, receive: Receive, send: Send,
                      headers: dict[str, str] | None = None) -> None:
        scope.setdefault("nextstate.log", {})["error"] = exc.code
        await error_response(exc, headers=headers)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.keys:  # the API has no websocket; nothing goes by unchecked
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http" or not self.keys or scope["method"] == "OPTIONS" or self._open(scope["path"]):
            await self.app(scope, receive, send)
            return
        key = match(self.keys, presented_key(scope["headers"]))
        if key is None:
            await self._refuse(Unauthorized("a valid API key is required (Authorization: Bearer <key>)",
                                            code="invalid_api_key"), scope, receive, send,
                               headers={"www-authenticate": "Bearer"})
            return
        scope.setdefault("nextstate.log", {})["client"] = key.key_hash
        state = scope.get("state", {}).get("proxy")  # the lifespan's (none before it has started)
        wait = await self.limiter.take(key, state.redis if state is not None else None)
        if wait > 0:
            await self._refuse(RateLimited(f"rate limit of {key.rpm:g} requests per minute reached for this key"),
                               scope, receive, send, headers={"retry-after": str(math.ceil(wait))})
            return
        scope[CLIENT] = key
        if not key.record:  # the key's setting comes first and the client's own is dropped
            scope["headers"] = [(b"x-nextstate-record", b"off"),
                                *(h for h in scope["headers"] if h[0] != b"x-nextstate-record")]
        await self.app(scope, receive, send)
