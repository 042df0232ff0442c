"""Actions against two fake policy-server replicas: load before routing, unload after draining."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from registry.actions import Control
from registry.publisher import PolicyServerError, Publisher
from registry.routing import read_table
from registry.store import Registry, RegistryError
from tests.registry.conftest import PublishFn


def loaded(replicas: list[Any]) -> list[set[str]]:
    return [set(app.state.loaded) for app, _ in replicas]


def assert_stable_loadable(control: Control, replicas: list[Any]) -> None:
    stable = control.registry.alias("stable")
    table = read_table(control.registry.redis)
    if stable is None:
        assert table is None or table.stable is None
        return
    info = control.registry.check_loadable(stable)
    assert table is not None and table.stable == stable and table.versions[stable] == info.served_name
    assert all(info.served_name in names for names in loaded(replicas))


def test_full_lifecycle_on_every_replica(control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    v1 = publish(gate=True)
    control.start_canary(v1, 0.05, "controller")
    assert loaded(replicas) == [{"tiny-chat@v1"}] * 2
    table = read_table(control.registry.redis)
    assert table is not None and (table.canary, table.canary_fraction, table.stable) == ("v1", 0.05, None)
    control.step_canary(0.25, 1, "controller")
    assert read_table(control.registry.redis).canary_fraction == 0.25  # type: ignore[union-attr]
    control.promote(None, "controller", "not worse", {"lcb": -0.02})
    assert control.registry.aliases() == {"stable": v1, "canary": None, "previous": None}
    assert_stable_loadable(control, replicas)

    v2 = publish(parent=v1, gate=True)
    control.start_canary(v2, 0.05, "controller")
    control.promote(None, "controller")
    assert control.registry.aliases() == {"stable": v2, "canary": None, "previous": v1}
    assert read_table(control.registry.redis).versions == {"v1": "tiny-chat@v1", "v2": "tiny-chat@v2"}  # type: ignore[union-attr]

    v3 = publish(parent=v2, gate=True)
    control.start_canary(v3, 0.05, "controller")
    control.promote(None, "controller")
    # v1 is no longer referenced: marked draining on the first reconcile, unloaded on the next
    control.sync()
    assert loaded(replicas) == [{"tiny-chat@v2", "tiny-chat@v3"}] * 2
    for app, _ in replicas:  # loads always precede the routing change, and no name is loaded twice
        loads = [name for op, name in app.state.calls if op == "load"]
        assert loads == ["tiny-chat@v1", "tiny-chat@v2", "tiny-chat@v3"]

    assert control.rollback("operator", "bad reports") == v3
    assert control.registry.aliases() == {"stable": v2, "canary": None, "previous": v1}
    assert control.registry.get(v3).state == "rolled_back"
    assert_stable_loadable(control, replicas)


def test_canary_rollback_and_reject_clear_the_canary(control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    v1, v2 = publish(gate=True), publish(gate=True)
    control.start_canary(v1, 0.05, "controller")
    with pytest.raises(RegistryError, match="still running"):
        control.start_canary(v2, 0.05, "controller")
    assert control.rollback("controller", "worse") == v1
    assert read_table(control.registry.redis).canary is None  # type: ignore[union-attr]
    control.start_canary(v2, 0.05, "controller")
    assert control.reject(None, "operator", "abort") == v2
    table = read_table(control.registry.redis)
    assert table is not None and (table.canary, table.canary_fraction, table.versions) == (None, 0.0, {})
    with pytest.raises(RegistryError, match="nothing to roll back"):
        control.rollback("operator")


def test_a_canary_is_replaced_in_one_step_by_the_version_trained_on_top_of_it(
        control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    v1 = publish(gate=True)
    v2, ungated = publish(parent=v1, gate=True), publish(parent=v1)
    with pytest.raises(RegistryError, match="no canary is running"):
        control.supersede(v2, 0.5, "controller")
    control.start_canary(v1, 0.5, "controller")
    with pytest.raises(RegistryError, match="only a version that passed the gate"):
        control.supersede(ungated, 0.5, "controller")
    assert control.registry.alias("canary") == v1  # a refused replacement leaves the running canary alone
    control.supersede(v2, 0.5, "controller", "superseded")
    assert (control.registry.get(v1).state, control.registry.get(v2).state) == ("rejected", "canary")
    state = control.registry.canary_state()
    assert state is not None and (state.version, state.fraction) == (v2, 0.5)
    table = read_table(control.registry.redis)
    assert table is not None and (table.canary, table.canary_fraction) == (v2, 0.5)
    changes = [e.evidence for e in control.registry.history() if e.kind == "alias_changed"]
    assert [(c["from"], c["to"]) for c in changes] == [(None, v1), (v1, v2)]  # never no canary in between
    assert all("tiny-chat@v2" in names for names in loaded(replicas))


def test_gate_failures_and_candidates_never_get_traffic(control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    failed, candidate = publish(gate=False), publish()
    for version in (failed, candidate):
        with pytest.raises(RegistryError, match="only a version that passed the gate"):
            control.start_canary(version, 0.5, "operator")
    with pytest.raises(RegistryError):
        control.promote(failed, "operator")
    assert loaded(replicas) == [set(), set()]
    assert control.registry.alias("canary") is None


def test_pin_freezes_automatic_actions(control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    v1, v2 = publish(gate=True), publish(gate=True)
    control.promote(v1, "operator")
    control.start_canary(v2, 0.05, "controller")
    control.pin(v1, "operator", "incident")
    assert control.registry.get(v2).state == "rejected" and control.registry.frozen()
    v3 = publish(gate=True)
    with pytest.raises(RegistryError, match="pinned"):
        control.start_canary(v3, 0.05, "controller")
    control.release("operator")
    control.start_canary(v3, 0.05, "controller")
    kinds = [e.kind for e in control.registry.history()]
    assert "pinned" in kinds and "released" in kinds


def test_a_failed_load_leaves_routing_untouched(registry: Registry, publish: PublishFn, tmp_path: Path) -> None:
    publisher = Publisher(urls=["http://127.0.0.1:9/v1"], drain_seconds=0.0, timeout=2.0)
    control = Control(registry, publisher)
    v1 = publish(gate=True)
    with pytest.raises(PolicyServerError, match="cannot list models"):
        control.start_canary(v1, 0.05, "controller")
    assert registry.get(v1).state == "gated_pass" and registry.alias("canary") is None
    assert read_table(registry.redis) is None
    publisher.close()


def test_unreferenced_versions_unload_only_after_the_drain_delay(registry: Registry, publish: PublishFn,
                                                                 replicas: list[Any]) -> None:
    publisher = Publisher(urls=[url for _, url in replicas], drain_seconds=30.0)
    control = Control(registry, publisher)
    v1, v2 = publish(gate=True), publish(gate=True)
    control.promote(v1, "operator")
    control.start_canary(v2, 0.05, "controller")
    control.reject(v2, "operator", "abort")  # v2 is no longer referenced; first seen unreferenced now
    assert loaded(replicas) == [{"tiny-chat@v1", "tiny-chat@v2"}] * 2
    now = time.time()
    assert publisher.reconcile(registry, now=now + 29)["draining"] == ["tiny-chat@v2"]
    assert publisher.reconcile(registry, now=now + 31)["unloaded"] == ["tiny-chat@v2"]
    assert loaded(replicas) == [{"tiny-chat@v1"}] * 2
    publisher.close()


def test_a_restarted_replica_gets_its_adapters_back(control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    v1, v2 = publish(gate=True), publish(gate=True)
    control.promote(v1, "operator")
    control.start_canary(v2, 0.05, "controller")
    replicas[1][0].state.loaded.clear()  # the replica restarted with nothing loaded
    control.sync()
    assert loaded(replicas) == [{"tiny-chat@v1", "tiny-chat@v2"}] * 2
