"""The routing table the registry writes for the proxies."""

from __future__ import annotations

import pytest
import redis

from proxy.records import ROUTING_KEY, RoutingTable
from proxy.routing import UnknownVersion, route
from registry.records import CanaryState
from registry.routing import read_table, sync_routing, write_table
from registry.store import Registry
from tests.registry.conftest import PublishFn


def test_revision_increments_on_each_change_only(registry: Registry, publish: PublishFn) -> None:
    first = sync_routing(registry)
    assert (first.revision, first.stable, first.canary, first.versions) == (1, None, None, {})
    assert sync_routing(registry).revision == 1  # nothing changed, nothing written
    v1 = publish(gate=True)
    registry.set_state(v1, "canary", "controller")
    registry.set_alias("canary", v1, "controller")
    registry.save_canary_state(CanaryState(version=v1, fraction=0.05))
    table = sync_routing(registry)
    assert (table.revision, table.canary, table.canary_fraction, table.versions) == (2, "v1", 0.05, {"v1": "tiny-chat@v1"})
    stored = RoutingTable.model_validate_json(registry.redis.get(ROUTING_KEY))
    assert stored == table and table.base_model == "tiny-chat"


def test_a_version_that_failed_the_gate_is_never_named(registry: Registry, publish: PublishFn) -> None:
    v1 = publish(gate=False)
    registry.redis.hset("nextstate:{learn}:registry:aliases", "canary", v1)  # even if an alias were forced
    registry.save_canary_state(CanaryState(version=v1, fraction=0.5))
    table = sync_routing(registry)
    assert table.canary is None and table.versions == {} and table.canary_fraction == 0.0


def test_concurrent_writers_never_reuse_a_revision(redis_client: redis.Redis) -> None:
    revisions = {write_table(redis_client, RoutingTable(canary_fraction=i / 10)).revision for i in range(10)}
    assert revisions == set(range(1, 11))
    assert read_table(redis_client).revision == 10  # type: ignore[union-attr]


def test_the_proxy_routes_by_the_table_the_registry_writes(registry: Registry, publish: PublishFn) -> None:
    stable, canary, failed = publish(gate=True), publish(gate=True), publish(gate=False)
    registry.set_state(stable, "promoted", "operator")
    registry.set_alias("stable", stable, "operator")
    registry.set_state(canary, "canary", "controller")
    registry.set_alias("canary", canary, "controller")
    registry.save_canary_state(CanaryState(version=canary, fraction=0.25))
    table = sync_routing(registry)

    def decide(pin: str | None = None, opt: str | None = None, model: str | None = None, key: str = "s") -> tuple:
        d = route(table, pin_header=pin, canary_header=opt, requested_model=model, session_key=key)
        return d.upstream_model, d.version, d.arm

    assert decide(opt="1") == ("tiny-chat@v2", canary, "canary")
    assert decide(opt="0") == ("tiny-chat@v1", stable, "stable")
    assert decide(model=f"tiny-chat@{stable}") == ("tiny-chat@v1", stable, "pinned")
    with pytest.raises(UnknownVersion):
        decide(pin=failed)  # a version that failed the gate cannot even be pinned
    arms = [decide(key=f"session-{i}")[2] for i in range(2000)]
    assert 0.2 < arms.count("canary") / len(arms) < 0.3
    assert all(decide(key=f"session-{i}") == decide(key=f"session-{i}") for i in range(50))  # sticky
