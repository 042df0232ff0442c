"""Writes the routing table every proxy reads: which served name is stable, which is canary, at what
fraction, and which versions a client may pin. Each write increments the revision.

Only versions in a servable state (canary, promoted) and referenced by an alias are named, so a
version that failed the gate can never receive traffic, not even by pinning. The top level is the
global scope; each personal scope with a servable stable or canary of its own gets an entry in
``scopes`` (a scope without one is served the global stable).
"""

from __future__ import annotations

import json
import time

import redis

from proxy.records import ROUTING_KEY, RoutingTable, ScopeRoute
from registry.records import GLOBAL_SCOPE
from registry.states import SERVABLE
from registry.store import Registry


def scope_route(registry: Registry) -> ScopeRoute:
    """The arms one scope's aliases and canary state call for."""
    aliases = registry.aliases()
    canary_state = registry.canary_state()
    versions: dict[str, str] = {}
    for name in ("stable", "previous", "canary"):
        version = aliases[name]
        if version is None:
            continue
        info = registry.get(version)
        if info.state in SERVABLE:
            versions[version] = info.served_name
    stable = aliases["stable"] if aliases["stable"] in versions else None
    canary = aliases["canary"] if canary_state is not None and aliases["canary"] in versions else None
    return ScopeRoute(
        stable=stable,  # versions ("v3"); ``versions`` maps each to its served name
        canary=canary,
        canary_fraction=canary_state.fraction if canary_state and canary else 0.0,
        versions=versions,
    )


def desired_table(registry: Registry) -> RoutingTable:
    """The table every scope's current aliases and canary state call for (revision not set)."""
    shared = registry.scoped(GLOBAL_SCOPE)
    top = scope_route(shared)
    scopes = {}
    for name in shared.scopes()[1:]:
        entry = scope_route(shared.scoped(name))
        if entry.stable or entry.canary:
            scopes[name] = entry
    return RoutingTable(base_model=registry.base_model, **top.model_dump(), scopes=scopes)


def referenced(table: RoutingTable) -> dict[str, str]:
    """Every served name the table references, each with the ``<scope>:<version>`` it serves."""
    names = {name: f"{GLOBAL_SCOPE}:{version}" for version, name in table.versions.items()}
    for scope, entry in table.scopes.items():
        names.update({name: f"{scope}:{version}" for version, name in entry.versions.items()})
    return names


def read_table(client: redis.Redis) -> RoutingTable | None:
    raw = client.get(ROUTING_KEY)
    return RoutingTable.model_validate_json(raw) if raw else None


def write_table(client: redis.Redis, table: RoutingTable) -> RoutingTable:
    """Store ``table`` with the revision after the stored one (optimistic transaction, retried)."""
    while True:
        with client.pipeline(transaction=True) as pipe:  # explicit: a cluster client defaults to none
            try:
                pipe.watch(ROUTING_KEY)
                raw = pipe.get(ROUTING_KEY)
                current = json.loads(raw)["revision"] if raw else 0
                stored = table.model_copy(update={"revision": int(current) + 1, "updated_at": time.time()})
                pipe.multi()
                pipe.set(ROUTING_KEY, stored.model_dump_json())
                pipe.execute()
                return stored
            except redis.WatchError:
                continue


def sync_routing(registry: Registry) -> RoutingTable:
    """Write the desired table when it differs from the stored one; return what is stored."""
    desired = desired_table(registry)
    current = read_table(registry.redis)
    keys = ("base_model", "stable", "canary", "canary_fraction", "versions", "scopes")
    if current is not None and all(getattr(current, k) == getattr(desired, k) for k in keys):
        return current
    return write_table(registry.redis, desired)
