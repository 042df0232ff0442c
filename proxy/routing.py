"""Which policy serves a request: the pure ``route`` decision and the routing-table refresher.

Precedence: a pin (``X-NextState-Policy: vN`` or ``model: <base>@vN``) > the opt-in/opt-out header
(``X-NextState-Canary: 1|0``) > a sticky slice (a stable hash of the session key below the canary
fraction, so a conversation never switches arm).

Each request routes within its learning scope (``proxy.scopes``): a personal scope with a lineage of
its own has its own stable and canary; one without a stable of its own is served the global stable
(its canary, when it has one, still comes from its own lineage). A pin names a version of the
request's scope first, then of the global scope.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

import redis.asyncio as aioredis
import structlog

from proxy.errors import NotFound
from proxy.records import ROUTING_KEY, Arm, RoutingTable, ScopeRoute
from proxy.tasks import cancelling

log = structlog.get_logger("proxy.routing")

_PIN_IN_MODEL = re.compile(r"^(?P<base>.+)@(?P<version>v\d+)$")
_SCOPED_ADAPTER = re.compile(r"^(?P<scope>[a-z0-9][a-z0-9-]{0,47})-v\d+$")


@dataclass(frozen=True)
class Decision:
    upstream_model: str | None
    """The model name to send upstream; None = leave the client's ``model`` as it is."""
    version: str | None
    """Registry version serving the request (``"v3"``); None for the base model."""
    arm: Arm
    scope: str = "global"
    """The learning scope of the request."""
    version_scope: str = "global"
    """The scope whose lineage ``version`` belongs to (a personal scope is served the global stable
    until it has one of its own)."""


class UnknownVersion(NotFound):
    """A pinned version the routing table does not know (404)."""

    code = "model_not_found"


def slice_position(session_key: str) -> float:
    """A stable position in [0, 1) for a session key: the same key always lands on the same arm."""
    digest = hashlib.sha256(session_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _model_for(table: RoutingTable, version: str) -> str:
    if version in table.versions:
        return table.versions[version]
    return f"{table.base_model}@{version}" if table.base_model else version


def foreign_adapter(table: RoutingTable | None, model: object, scope: str) -> bool:
    """Is ``model`` the served name of a personal adapter (``<base>@<scope>-vN``) of a scope other than
    ``scope``? Such a name is never sent upstream for this request: one user's adapter, trained on that
    user's conversations, answers no one else."""
    if table is None or not table.base_model or not isinstance(model, str):
        return False
    match = _SCOPED_ADAPTER.match(model.removeprefix(f"{table.base_model}@")) if model.startswith(
        f"{table.base_model}@") else None
    return match is not None and match.group("scope") != scope


@lru_cache(maxsize=8)
def _adapter_names(base_model: str) -> re.Pattern[bytes]:
    """Served names of the personal adapters of ``base_model`` anywhere in a body (``<base>@<scope>-vN``)."""
    return re.compile(rb"(?<![\w.@/-])" + re.escape(base_model.encode()) + rb"@[a-z0-9][a-z0-9-]{0,47}-v\d+(?![\w-])")


def foreign_adapter_in(table: RoutingTable | None, body: bytes, scope: str) -> str | None:
    """The first served name of another scope's personal adapter that ``body`` carries anywhere, or None: for a
    body the proxy sends on without reading its fields (a multipart form, a URL-encoded one)."""
    if table is None or not table.base_model or f"{table.base_model}@".encode() not in body:
        return None
    for match in _adapter_names(table.base_model).finditer(body):
        name = match.group(0).decode()
        if foreign_adapter(table, name, scope):
            return name
    return None


def route(
    table: RoutingTable | None,
    *,
    pin_header: str | None,
    canary_header: str | None,
    requested_model: str | None,
    session_key: str,
    scope: str = "global",
) -> Decision:
    """Decide the upstream model, version and arm of one request; raise UnknownVersion for a bad pin."""
    own: ScopeRoute | None = table.scopes.get(scope) if table is not None and scope != "global" else None
    pinned = (pin_header or "").strip() or None
    if pinned is None and requested_model:
        if own is not None and requested_model in own.versions.values():
            pinned = next(v for v, name in own.versions.items() if name == requested_model)
        elif match := _PIN_IN_MODEL.match(requested_model):
            pinned = match.group("version")
    if pinned is not None:
        if own is not None and pinned in own.versions:
            return Decision(own.versions[pinned], pinned, "pinned", scope, scope)
        if table is None or pinned not in table.versions:
            raise UnknownVersion(f"unknown policy version {pinned!r}", param="model")
        return Decision(table.versions[pinned], pinned, "pinned", scope)
    if table is None:
        return Decision(None, None, "base", scope)
    if own is not None and own.stable:
        stable = Decision(own.versions.get(own.stable, own.stable), own.stable, "stable", scope, scope)
    elif table.stable:
        stable = Decision(_model_for(table, table.stable), table.stable, "stable", scope)
    elif table.canary is None and (own is None or own.canary is None):
        return Decision(None, None, "base", scope)
    else:
        stable = Decision(table.base_model, None, "base", scope)
    if own is not None and own.canary:
        canary = Decision(own.versions.get(own.canary, own.canary), own.canary, "canary", scope, scope)
        fraction = own.canary_fraction
    elif own is None and table.canary:
        canary = Decision(_model_for(table, table.canary), table.canary, "canary", scope)
        fraction = table.canary_fraction
    else:  # a personal lineage's stable is not compared with the global canary
        return stable
    opt = (canary_header or "").strip().lower()
    if opt in {"1", "true", "yes", "on"}:
        return canary
    if opt in {"0", "false", "no", "off"}:
        return stable
    return canary if slice_position(session_key) < fraction else stable


class RoutingRefresher:
    """Reloads the routing table from Redis every ``interval`` seconds; keeps the last good one."""

    def __init__(self, redis_client: aioredis.Redis, interval: float) -> None:
        self.redis = redis_client
        self.interval = interval
        self.table: RoutingTable | None = None

    async def refresh(self) -> None:
        raw = await self.redis.get(ROUTING_KEY)
        if raw is None:
            self.table = None
            return
        table = RoutingTable.model_validate_json(raw)
        if self.table is None or table.revision != self.table.revision or table != self.table:
            log.info("routing_table", revision=table.revision, stable=table.stable, canary=table.canary,
                     canary_fraction=table.canary_fraction)
        self.table = table

    async def run(self) -> None:
        while not cancelling():
            try:
                await self.refresh()
            except Exception as exc:  # Redis down or a malformed table: keep serving with the last one
                if cancelling():
                    raise asyncio.CancelledError from exc
                log.warning("routing_refresh_failed", error=repr(exc))
            await asyncio.sleep(self.interval)
