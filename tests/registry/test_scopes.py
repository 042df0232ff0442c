"""Learning scopes in the registry, on real Redis and fake policy servers: one lineage per scope, the
routing table per scope, only referenced adapters loaded, and the personal canary decided on the user's
own labeled turns."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from labeler.records import SAMPLES_STREAM, SampleRecord
from proxy.routing import route
from registry.actions import Control
from registry.canary import CanaryPolicy
from registry.controller import Controller
from registry.personal_canary import PersonalPolicy
from registry.records import GateVerdict, Manifest
from registry.routing import read_table
from registry.store import Registry

POLICY = CanaryPolicy(steps=(0.05, 0.25, 0.5), step_samples=20, min_samples=60, margin=0.1, alpha=0.05)


def publish_in(registry: Registry, adapter_files: Path, parent: str | None = None, started_from: str | None = None) -> str:
    version = registry.allocate_version()
    staging = registry.staging_dir(version)
    shutil.copytree(adapter_files, staging, dirs_exist_ok=True)
    registry.publish(staging, Manifest(version=version, parent=parent, base_model="builtin:tiny-chat", method="combined",
                                       scope=registry.scope, started_from=started_from))
    registry.record_gate(version, GateVerdict(passed=True))
    return version


def label(control: Control, scope: str, version_scope: str, version: str | None, classes: str) -> None:
    """Labeled turns of one user, in order: ``classes`` is a string of ``+`` (prefer) and ``-`` (avoid)."""
    for mark in classes:
        turn = uuid.uuid4().hex
        cls = "prefer" if mark == "+" else "avoid"
        sample = SampleRecord(record_id=f"{turn}:r0", sample_id=turn, turn_id=turn, session_id="s", cls=cls,
                              reward=1 if cls == "prefer" else -1, serving_version=version, scope=scope,
                              version_scope=version_scope, messages=[{"role": "user", "content": "hi"}],
                              response={"role": "assistant", "content": "x"})
        control.registry.redis.xadd(SAMPLES_STREAM, {"record": sample.model_dump_json()})


def test_each_scope_has_its_own_lineage_and_names(registry: Registry, adapter_files: Path) -> None:
    alice = registry.scoped("alice")
    assert publish_in(registry, adapter_files) == "v1"
    assert publish_in(alice, adapter_files) == "v1"  # numbered per scope
    assert publish_in(alice, adapter_files, parent="v1") == "v2"
    assert [i.version for i in registry.versions()] == ["v1"]
    assert [(i.version, i.served_name, i.scope) for i in alice.versions()] == [
        ("v1", "tiny-chat@alice-v1", "alice"), ("v2", "tiny-chat@alice-v2", "alice")]
    assert registry.get("v1").served_name == "tiny-chat@v1"
    assert Path(alice.get("v1").path).parent == registry.root / "scopes" / "alice"
    assert registry.scopes() == ["global", "alice"]
    assert {e.scope for e in alice.history()} == {"alice"} and {e.scope for e in registry.history()} == {"global"}


def test_routing_table_and_loaded_adapters_follow_every_scope(control: Control, adapter_files: Path,
                                                               replicas: list[Any]) -> None:
    shared = control.registry
    stable = publish_in(shared, adapter_files)
    control.promote(stable, "operator", "first stable")
    alice = control.scoped("alice")
    first = publish_in(alice.registry, adapter_files, started_from=stable)
    alice.start_canary(first, 0.5, "operator")
    table = read_table(shared.redis)
    assert table is not None and table.stable == "v1" and table.versions == {"v1": "tiny-chat@v1"}
    assert set(table.scopes) == {"alice"}
    entry = table.scopes["alice"]
    assert entry.stable is None and entry.canary == "v1" and entry.versions == {"v1": "tiny-chat@alice-v1"}
    # alice: her canary on the opt-in header, else the global stable; bob (no lineage): the global stable
    opted = route(table, pin_header=None, canary_header="1", requested_model="m", session_key="k", scope="alice")
    assert (opted.upstream_model, opted.version_scope, opted.arm) == ("tiny-chat@alice-v1", "alice", "canary")
    out = route(table, pin_header=None, canary_header="0", requested_model="m", session_key="k", scope="alice")
    assert (out.upstream_model, out.version_scope, out.arm) == ("tiny-chat@v1", "global", "stable")
    bob = route(table, pin_header=None, canary_header="1", requested_model="m", session_key="k", scope="bob")
    assert (bob.upstream_model, bob.arm, bob.scope) == ("tiny-chat@v1", "stable", "bob")
    for app, _ in replicas:
        assert set(app.state.loaded) == {"tiny-chat@v1", "tiny-chat@alice-v1"}
    # rolled back: alice's adapter is referenced by nothing any more and is unloaded (drain 0 s)
    alice.rollback("operator", "test")
    control.sync()
    control.sync()
    for app, _ in replicas:
        assert set(app.state.loaded) == {"tiny-chat@v1"}
    assert read_table(shared.redis).scopes == {}


def test_personal_canary_promotes_on_the_users_own_turns(control: Control, adapter_files: Path) -> None:
    shared = control.registry
    stable = publish_in(shared, adapter_files)
    control.promote(stable, "operator", "first stable")
    alice = control.scoped("alice")
    label(control, "alice", "global", stable, "--+---")  # what alice thought of the shared stable
    candidate = publish_in(alice.registry, adapter_files, started_from=stable)
    controller = Controller(control, POLICY, personal=PersonalPolicy())
    controller.tick()
    assert alice.registry.alias("canary") == candidate
    assert alice.registry.canary_state().fraction == PersonalPolicy().fraction
    label(control, "bob", "alice", candidate, "---")  # another scope's turns are not alice's evidence
    label(control, "alice", "alice", candidate, "++")
    controller.tick()
    assert alice.registry.alias("stable") is None  # two turns: not yet
    label(control, "alice", "alice", candidate, "+")
    controller.tick()
    assert alice.registry.alias("stable") == candidate and shared.alias("stable") == stable
    promoted = next(e for e in alice.registry.history() if e.kind == "promoted")
    assert promoted.evidence["rule"] == "personal" and promoted.evidence["canary"] == {"labeled": 3, "prefer": 3}
    assert promoted.evidence["stable"] == {"labeled": 6, "prefer": 1}
    assert read_table(shared.redis).scopes["alice"].stable == candidate


def test_personal_canary_rolls_back_when_the_user_turns_negative(control: Control, adapter_files: Path) -> None:
    alice = control.scoped("alice")
    candidate = publish_in(alice.registry, adapter_files)
    controller = Controller(control, POLICY, personal=PersonalPolicy())
    controller.tick()
    assert alice.registry.alias("canary") == candidate
    label(control, "alice", "alice", candidate, "+---")
    controller.tick()
    assert alice.registry.get(candidate).state == "rolled_back" and alice.registry.alias("canary") is None
    assert control.registry.aliases()["stable"] is None  # the global lineage never moved


def test_a_newer_candidate_supersedes_the_personal_canary_it_extends(control: Control, adapter_files: Path) -> None:
    alice = control.scoped("alice")
    label(control, "alice", "global", None, "------")  # alice is unhappy with what she is served
    first = publish_in(alice.registry, adapter_files)
    controller = Controller(control, POLICY, personal=PersonalPolicy())
    controller.tick()
    label(control, "alice", "alice", first, "-+")  # undecided
    controller.tick()
    assert alice.registry.alias("canary") == first
    second = publish_in(alice.registry, adapter_files, parent=first)  # the learner trained on top of it
    controller.tick()  # at once: the newer one carries the first one's training and the user's newer turns
    assert alice.registry.alias("canary") == second and alice.registry.get(first).state == "rejected"
    assert alice.registry.canary_state().inherited == [-1, 1]
    label(control, "alice", "alice", first, "-")  # late labels of the superseded one count for neither arm
    label(control, "alice", "alice", second, "++")  # 2 own + 2 inherited at weight 0.5 = 3 effective turns
    controller.tick()
    assert alice.registry.alias("stable") == second
    promoted = next(e for e in alice.registry.history() if e.kind == "promoted")
    assert promoted.evidence["stable"] == {"labeled": 6, "prefer": 0}
    assert promoted.evidence["canary"] == {"labeled": 2, "prefer": 2}
    assert promoted.evidence["inherited"] == {"labeled": 2, "prefer": 1, "weight": 0.5}


def test_a_superseded_canary_never_leaves_the_scope_without_one(control: Control, adapter_files: Path) -> None:
    alice = control.scoped("alice")
    first = publish_in(alice.registry, adapter_files)
    controller = Controller(control, POLICY, personal=PersonalPolicy())
    controller.tick()
    second = publish_in(alice.registry, adapter_files, parent=first)
    third = publish_in(alice.registry, adapter_files, parent=second)
    controller.tick()  # the tip of the chain over the canary replaces it; the link between is never canaried
    assert alice.registry.alias("canary") == third
    changes = [(e.evidence["from"], e.evidence["to"]) for e in alice.registry.history()
               if e.kind == "alias_changed" and e.evidence.get("alias") == "canary"]
    assert changes == [(None, first), (first, third)]


def test_an_inconclusive_personal_canary_with_a_thin_stable_hands_stable_a_share(control: Control,
                                                                                  adapter_files: Path) -> None:
    shared = control.registry
    stable = publish_in(shared, adapter_files)
    control.promote(stable, "operator", "first stable")
    alice = control.scoped("alice")
    label(control, "alice", "global", stable, "++-+")  # alice's first turns happened to please
    candidate = publish_in(alice.registry, adapter_files, started_from=stable)
    controller = Controller(control, POLICY, personal=PersonalPolicy(max_labeled=6))
    controller.tick()
    label(control, "alice", "alice", candidate, "+-+-+-")  # 6 turns, no verdict either way
    controller.tick()
    state = alice.registry.canary_state()
    assert alice.registry.alias("canary") == candidate and state.fraction == 0.5
    assert read_table(shared.redis).scopes["alice"].canary_fraction == 0.5  # the proxy now sends half to stable
    step = next(e for e in alice.registry.history() if e.kind == "canary_step")
    assert "4 labeled stable turns" in step.reason
    controller.tick()  # sharing already: nothing more to do until stable has its turns
    assert alice.registry.canary_state().step == state.step
    newer = publish_in(alice.registry, adapter_files, parent=candidate)
    controller.tick()  # a newer version replaces it and goes on sharing while stable is thin
    assert alice.registry.alias("canary") == newer and alice.registry.canary_state().fraction == 0.5
    label(control, "alice", "global", stable, "--")  # stable's turns come in: the verdict is due
    label(control, "alice", "alice", newer, "+-+-")
    controller.tick()
    assert alice.registry.get(newer).state == "rejected"  # 5 of 10 (6 own + 6 at half weight) against 3 of 6
