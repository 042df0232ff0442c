"""Writes the routing table every proxy reads: which served name is stable, which is canary, at what
fraction, and which versions a client may pin. Each write increments the revision.

Only versions in a servable state (canary, promoted) and referenced by an alias are named, so a
version that failed the gate can never receive traffic, not even by pinning.
"""

from __future__ import annotations

import json
import time

import redis

from proxy.records import ROUTING_KEY, RoutingTable
from registry.states import SERVABLE
from registry.store import Registry


def desired_table(registry: Registry) -> RoutingTable:
    """The table the registry's current aliases and canary state call for (revision not set)."""
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
    return RoutingTable(
        base_model=registry.base_model,
        stable=stable,  # versions ("v3"); ``versions`` maps each to its served name
        canary=canary,
        canary_fraction=canary_state.fraction if canary_state and canary else 0.0,
        versions=versions,
    )


def read_table(client: redis.Redis) -> RoutingTable | None:
    raw = client.get(ROUTING_KEY)
    return RoutingTable.model_validate_json(raw) if raw else None


def write_table(client: redis.Redis, table: RoutingTable) -> RoutingTable:
    """Store ``table`` with the revision after the stored one (optimistic transaction, retried)."""
    while True:
        with client.pipeline() as pipe:
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
    keys = ("base_model", "stable", "canary", "canary_fraction", "versions")
    if current is not None and all(getattr(current, k) == getattr(desired, k) for k in keys):
        return current
    return write_table(registry.redis, desired)
