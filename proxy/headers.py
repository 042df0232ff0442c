"""The header policy, both ways: what goes upstream of the client's headers, what comes back of the upstream's.

Going up: end-to-end headers (auth, organisation, a provider's own) pass; hop-by-hop headers, what
describes the proxy's own connection or body and the proxy's controls (``X-Session-Id``,
``X-NextState-*``) stay; the client's credentials are replaced when an upstream key is configured.
Coming back: the upstream's end-to-end headers (request id, rate limits, ``retry-after``) are added
to the proxy's own, which win.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from urllib.parse import quote

from proxy.errors import BadRequest
from proxy.http1 import Response as UpstreamResponse

# not forwarded: hop-by-hop headers, what describes the proxy's own connection or body, the proxy's controls
_NOT_FORWARDED = frozenset({
    b"connection", b"keep-alive", b"proxy-authorization", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"host", b"content-length", b"content-type", b"content-encoding",
    b"accept-encoding", b"expect",
    b"cookie", b"x-session-id", b"x-turn-type", b"x-session-done",
})
# the client's credentials, replaced by NEXTSTATE_UPSTREAM_API_KEY when that is set
_CREDENTIALS = frozenset({b"authorization", b"api-key", b"x-api-key"})
# the request headers the handlers read (collected while the others are picked for the upstream)
_CONTROLS = frozenset({
    b"content-length", b"content-encoding", b"authorization", b"x-session-id", b"x-turn-type", b"x-session-done",
    b"x-nextstate-record", b"x-nextstate-policy", b"x-nextstate-canary", b"x-nextstate-scope",
})
_JSON = (b"content-type", b"application/json")
_BODY_TYPE = frozenset({b"content-type", b"content-encoding"})

# hop-by-hop headers, and what describes the body the proxy sends rather than the one it received
_NOT_RELAYED = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length", b"content-encoding", b"date", b"server",
})

MAX_SESSION_ID_CHARS = 200  # what a session key keeps (proxy.sessions)
_SESSION_ID = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


def forward_headers(raw: Iterable[tuple[bytes, bytes]], api_key: str | None,
                    controls: dict[bytes, str] | None = None, *, as_sent: bool = False,
                    own_key: bool = False) -> list[tuple[bytes, bytes]]:
    """The client's end-to-end headers for the upstream, JSON content type first; in the same pass the
    first value of each of the proxy's controls goes into ``controls``.

    ``as_sent``: the body goes upstream as the client sent it, so its own content type and encoding go too.
    ``own_key``: the client's credentials are a key of the proxy's own (``NEXTSTATE_API_KEYS``), never
    passed on (the upstream gets ``api_key`` or nothing).
    """
    drop_credentials = bool(api_key) or own_key
    out = [] if as_sent else [_JSON]
    for name, value in raw:
        if controls is not None and name in _CONTROLS and name not in controls:
            controls[name] = value.decode("latin-1")
        if as_sent and name in _BODY_TYPE:
            out.append((name, value))
            continue
        if name in _NOT_FORWARDED or name.startswith(b"x-nextstate-") or (drop_credentials and name in _CREDENTIALS):
            continue
        out.append((name, value))
    if api_key:
        out.append((b"authorization", f"Bearer {api_key}".encode("latin-1")))
    return out


def relayed(upstream: UpstreamResponse, own: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's end-to-end headers to add to ``own``.

    Headers the proxy already set win; the upstream's own ``x-nextstate-*`` (a proxy in front of a
    proxy) are not repeated.
    """
    names = {name for name, _ in own}
    return [(name, value) for name, value in upstream.raw_headers
            if name not in _NOT_RELAYED and name not in names and not name.startswith(b"x-nextstate-")]


def key_hash(authorization: str | None) -> str | None:
    """A short sha256 of the client's key, never the key itself."""
    if not authorization:
        return None
    token = authorization.split(" ", 1)[-1].strip()
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else None


_UNSAFE_IN_HEADER = re.compile(r"[^\x20-\x7e\x80-\xff\t]")


def header_value(text: str) -> bytes:
    """``text`` as a response header value; percent-encoded when it holds what a header cannot (a ``user``
    field with line breaks or characters beyond Latin-1)."""
    if _UNSAFE_IN_HEADER.search(text):
        return quote(text, safe="").encode()
    return text.encode("latin-1")


def session_header(value: str | None) -> str | None:
    """``X-Session-Id`` checked: visible ASCII (inner spaces allowed), at most ``MAX_SESSION_ID_CHARS``."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_SESSION_ID_CHARS or not _SESSION_ID.fullmatch(value):
        raise BadRequest(f"X-Session-Id must be at most {MAX_SESSION_ID_CHARS} visible ASCII characters",
                         param="X-Session-Id", code="invalid_session_id")
    return value


def check_user(user: object) -> None:
    """The body's ``user`` (a session key when no header names one): a string of bounded length."""
    if user is not None and (not isinstance(user, str) or len(user) > MAX_SESSION_ID_CHARS):
        raise BadRequest(f"'user' must be a string of at most {MAX_SESSION_ID_CHARS} characters", param="user",
                         code="invalid_user")
