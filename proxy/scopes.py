"""Which learning scope a request belongs to: the pure ``request_scope`` decision.

A learning scope owns a lineage (versions, aliases, samples, verdicts, audit trail). ``global`` is the
one shared scope; every other scope is personal. The sources a personal scope is taken from are tried
in the order the settings name them:

- ``header``: the ``X-NextState-Scope`` header (a client or gateway names the scope);
- ``key``: the client's API key, hashed (``k-`` + 16 hex digits; the key itself is never stored);
- ``user``: the body's ``user`` field, hashed (``u-`` + 16 hex digits).

A request none of them names goes to the ``unkeyed`` scope. Scope names are short, lower-case and made
of ``[a-z0-9-]`` only, so they are valid in a vLLM LoRA name, a directory name and a Redis key.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

GLOBAL = "global"
SOURCES = ("header", "key", "user")
SCOPE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")


def valid_scope(name: str) -> bool:
    """Is ``name`` usable as a scope name (also inside an adapter's served name and a path)?"""
    return bool(SCOPE_NAME.match(name))


@lru_cache(maxsize=16)
def parse_sources(spec: str) -> tuple[str, ...]:
    """``"header,key,user"`` as a tuple of sources; raise ValueError on an unknown one."""
    sources = tuple(part.strip().lower() for part in spec.split(",") if part.strip())
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown scope source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    return sources


def _hashed(prefix: str, value: str) -> str:
    return f"{prefix}-{hashlib.sha256(value.encode()).hexdigest()[:16]}"


def _from_header(value: str) -> str:
    """A readable header value is kept as its own name; anything else is hashed (bounded, safe)."""
    name = value.strip().lower()
    return name if valid_scope(name) else _hashed("h", value.strip())


def request_scope(sources: tuple[str, ...], unkeyed: str, *, header: str | None, key_hash: str | None,
                  user: object) -> str:
    """The scope of one request: the first source in ``sources`` the request carries, else ``unkeyed``.

    ``key_hash`` is the already hashed API key (``proxy.chat.key_hash``); ``user`` is the body's field
    as sent (only a non-empty string counts).
    """
    for source in sources:
        if source == "header" and header and header.strip():
            return _from_header(header)
        if source == "key" and key_hash:
            return f"k-{key_hash}"
        if source == "user" and isinstance(user, str) and user.strip():
            return _hashed("u", user.strip())
    return unkeyed


def resolve_scope(scope_by: str, unkeyed: str, *, header: str | None, key_hash: str | None, user: object,
                  client_scope: str | None) -> str:
    """The scope of a request as the proxy settles it: ``request_scope`` over the ``scope_by`` setting, except
    that a client key configured with a scope (``proxy.access``) names it unless a trusted header names another."""
    sources = parse_sources(scope_by)
    header = header if "header" in sources else None
    if client_scope and not (header and header.strip()):
        return client_scope
    return request_scope(sources, unkeyed, header=header, key_hash=key_hash, user=user)
