"""The store on real Redis: immutable versions, gate verdicts, state changes, aliases, audit log."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.records import GateVerdict, Manifest
from registry.states import IllegalTransition
from registry.store import NotLoadable, Registry, RegistryError, UnknownVersion
from tests.registry.conftest import PublishFn


def test_publish_is_atomic_and_immutable(registry: Registry, publish: PublishFn) -> None:
    v1 = publish(loss=0.5)
    info = registry.get(v1)
    assert (v1, info.state, info.served_name) == ("v1", "candidate", "tiny-chat@v1")
    assert registry.manifest(v1).metrics == {"loss": 0.5}
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".tmp-")]
    staging = registry.staging_dir(v1)
    with pytest.raises(RegistryError, match="immutable"):
        registry.publish(staging, Manifest(version=v1, base_model="x", method="rl"))
    assert registry.allocate_version() == "v2"  # numbers are never reused


def test_gate_verdict_is_recorded_beside_the_immutable_directory(registry: Registry, publish: PublishFn) -> None:
    v1 = publish()
    before = sorted(p.name for p in Path(registry.get(v1).path).iterdir())
    verdict = GateVerdict(passed=False, reasons=["drift 0.9 > 0.5"], metrics={"kl": 0.9}, compared_to=None)
    info = registry.record_gate(v1, verdict)
    assert info.state == "gated_fail" and info.gate is not None and info.gate.metrics == {"kl": 0.9}
    assert sorted(p.name for p in Path(info.path).iterdir()) == before
    assert registry.manifest(v1).gate == verdict  # the manifest as read carries the verdict
    event = registry.history()[-1]
    assert (event.kind, event.actor, event.evidence["gate"]["reasons"]) == ("gate_verdict", "gate", ["drift 0.9 > 0.5"])
    with pytest.raises(IllegalTransition):
        registry.set_state(v1, "canary", "operator")


def test_aliases_refuse_unknown_and_unloadable_versions(registry: Registry, publish: PublishFn) -> None:
    v1 = publish()
    with pytest.raises(UnknownVersion):
        registry.set_alias("stable", "v9", "operator")
    with pytest.raises(RegistryError, match="unknown alias"):
        registry.set_alias("beta", v1, "operator")
    (Path(registry.get(v1).path) / "adapter_config.json").unlink(missing_ok=True)
    with pytest.raises(NotLoadable, match=r"adapter_config\.json"):
        registry.set_alias("stable", v1, "operator")
    assert registry.alias("stable") is None


def test_every_change_is_appended_to_the_audit_log(registry: Registry, publish: PublishFn) -> None:
    v1 = publish(gate=True)
    registry.set_state(v1, "promoted", "operator", "by hand", evidence={"ticket": 7})
    registry.set_alias("stable", v1, "operator", "by hand")
    kinds = [(e.kind, e.version, e.actor) for e in registry.history()]
    assert kinds == [("candidate_created", v1, "learner"), ("gate_verdict", v1, "gate"),
                     ("promoted", v1, "operator"), ("alias_changed", v1, "operator")]
    assert registry.history()[2].evidence == {"from": "gated_pass", "to": "promoted", "ticket": 7}
    assert registry.stable_history() == [v1]


def test_writes_inside_atomic_land_together_or_not_at_all(registry: Registry, publish: PublishFn) -> None:
    v1, v2 = publish(gate=True), publish(gate=True)
    registry.set_state(v1, "promoted", "operator")
    registry.set_alias("stable", v1, "operator")
    events = len(registry.history())
    with pytest.raises(UnknownVersion), registry.atomic():
        registry.set_state(v2, "promoted", "operator")
        registry.set_alias("previous", v1, "operator")
        registry.set_alias("canary", "v9", "operator")  # fails half-way: nothing before it is written either
    assert (registry.get(v2).state, registry.aliases()) == ("gated_pass", {"stable": v1, "canary": None, "previous": None})
    assert len(registry.history()) == events
    with registry.atomic():
        registry.set_state(v2, "promoted", "operator")
        registry.set_alias("previous", v1, "operator")
        registry.set_alias("stable", v2, "operator")
        assert registry.alias("stable") == v1  # reads inside still see the state before the block
    assert (registry.get(v2).state, registry.alias("stable"), registry.alias("previous")) == ("promoted", v2, v1)
    assert [e.kind for e in registry.history()[events:]] == ["promoted", "alias_changed", "alias_changed"]
