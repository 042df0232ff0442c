"""The controller on real Redis with simulated reward streams: it promotes, rolls back and rejects."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from labeler.records import SAMPLES_STREAM, SampleRecord
from proxy.records import TURNS_STREAM, Serving, Timings, TurnRecord, TurnRequest, TurnResponse
from registry.actions import Control
from registry.canary import CanaryPolicy
from registry.controller import Controller
from registry.records import UPSTREAM_OUTCOMES_KEY
from registry.routing import read_table
from registry.store import Registry
from tests.registry.conftest import PublishFn
from tests.registry.simulate import add_samples

ROOT = Path(__file__).resolve().parents[2]
POLICY = CanaryPolicy(steps=(0.05, 0.25, 0.5), step_samples=20, min_samples=60, margin=0.25, alpha=0.05,
                      deadline_seconds=3600, health_min_requests=10, max_error_rate=0.1, max_p99_ms=5000)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        import time

        return time.time() + self.now


def run_until_done(controller: Controller, control: Control, canary: str, stable: str | None,
                   canary_rate: float, stable_rate: float, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    actions = []
    for _ in range(60):
        add_samples(control, canary, 5, canary_rate, rng)
        add_samples(control, stable, 20, stable_rate, rng)
        decision = controller.tick()
        assert decision is not None
        actions.append(decision.action)
        if decision.action in ("promote", "rollback", "reject"):
            break
    return actions


def started(controller: Controller, control: Control, publish: PublishFn) -> tuple[str, str]:
    stable = publish(gate=True)
    control.promote(stable, "operator", "first stable")
    canary = publish(parent=stable, gate=True)
    first = controller.tick()
    assert first is not None and first.fraction == 0.05
    assert control.registry.alias("canary") == canary
    return stable, canary


def test_equal_rewards_step_up_then_promote(control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    controller = Controller(control, POLICY)
    stable, canary = started(controller, control, publish)
    actions = run_until_done(controller, control, canary, stable, 0.8, 0.8)
    assert actions[-1] == "promote" and actions.count("step") == 2
    assert control.registry.aliases() == {"stable": canary, "canary": None, "previous": stable}
    events = [e for e in control.registry.history() if e.actor == "controller"]
    kinds = [e.kind for e in events]
    assert kinds.count("canary_step") == 2 and "promoted" in kinds and "canary_started" in kinds
    promoted = next(e for e in events if e.kind == "promoted")
    assert promoted.evidence["canary"]["prefer"] + promoted.evidence["canary"]["avoid"] >= 60
    assert promoted.evidence["interval"][0] > -0.25 and promoted.evidence["compared_to"] == stable


def test_worse_rewards_roll_back(control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    controller = Controller(control, POLICY)
    stable, canary = started(controller, control, publish)
    actions = run_until_done(controller, control, canary, stable, 0.1, 0.9)
    assert actions[-1] == "rollback" and "promote" not in actions
    assert control.registry.get(canary).state == "rolled_back"
    assert control.registry.aliases()["stable"] == stable
    table = read_table(control.registry.redis)
    assert table is not None and table.canary is None and "v2" not in table.versions
    rolled = [e for e in control.registry.history() if e.kind == "rolled_back"][-1]
    assert rolled.actor == "controller" and rolled.evidence["interval"][1] < 0


def test_inconclusive_at_the_deadline_is_rejected(control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    clock = Clock()
    controller = Controller(control, POLICY, clock=clock)
    stable, canary = started(controller, control, publish)
    rng = random.Random(3)
    add_samples(control, canary, 10, 0.5, rng)
    add_samples(control, stable, 10, 0.5, rng)
    assert controller.tick().action == "continue"  # type: ignore[union-attr]
    clock.now = 3601
    decision = controller.tick()
    assert decision is not None and decision.action == "reject"
    assert control.registry.get(canary).state == "rejected" and control.registry.alias("stable") == stable


def test_error_rate_and_latency_breaches_roll_back(control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    controller = Controller(control, POLICY)
    stable, canary = started(controller, control, publish)
    control.registry.redis.hset(UPSTREAM_OUTCOMES_KEY, mapping={f"{canary}:ok": 40, f"{canary}:error": 10})
    decision = controller.tick()
    assert decision is not None and decision.action == "rollback" and "error rate" in decision.reason

    third = publish(parent=stable, gate=True)
    assert controller.tick().action == "step"  # type: ignore[union-attr]
    pipe = control.registry.redis.pipeline()
    for i in range(20):
        turn = TurnRecord(record_id=f"t{i}", turn_id=f"t{i}", session_id="s", turn_index=0,
                          request=TurnRequest(messages=[]), response=TurnResponse(message={}),
                          serving=Serving(version=third, arm="canary"), timings=Timings(total_ms=9000.0))
        pipe.xadd(TURNS_STREAM, {"record": turn.model_dump_json()})
    pipe.execute()
    decision = controller.tick()
    assert decision is not None and decision.action == "rollback" and "p99" in decision.reason


def test_relabels_replace_labels_and_opt_in_turns_count(control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    controller = Controller(control, POLICY)
    _, canary = started(controller, control, publish)
    sample = SampleRecord(record_id="t:r0", sample_id="t", turn_id="t", session_id="s", cls="avoid", reward=-1,
                          serving_version=canary, messages=[], response={})
    relabel = sample.model_copy(update={"record_id": "t:r1", "revision": 1, "cls": "prefer", "reward": 1})
    for record in (sample, relabel):
        control.registry.redis.xadd(SAMPLES_STREAM, {"record": record.model_dump_json()})
    control.registry.redis.xadd(SAMPLES_STREAM, {"record": b"{not json"})  # skipped, never fatal
    control.registry.redis.xadd(TURNS_STREAM, {"record": b"{}"})
    decision = controller.tick()
    assert decision is not None and decision.evidence["canary"] == {"prefer": 1, "avoid": 0, "rate": 1.0}


def test_frozen_registry_takes_no_automatic_action(control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    v1 = publish(gate=True)
    control.pin(v1, "operator")
    publish(gate=True)
    assert Controller(control, POLICY).tick() is None
    assert control.registry.alias("canary") is None


@pytest.mark.timeout(60)
def test_run_loop_stops_on_event(control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    publish(gate=True)
    stop = threading.Event()
    thread = threading.Thread(target=Controller(control, POLICY).run, args=(0.05, stop))
    thread.start()
    for _ in range(200):
        if control.registry.alias("canary"):
            break
        stop.wait(0.05)
    stop.set()
    thread.join(10)
    assert control.registry.alias("canary") == "v1" and not thread.is_alive()


@pytest.mark.timeout(120)
def test_controller_process_starts_the_canary(redis_url: str, registry: Registry, publish: PublishFn,
                                              replicas: list[Any], tmp_path: Path) -> None:
    """``nextstate controller --once`` as a real process, configured only through the environment."""
    publish(gate=True)
    env = {**os.environ, "NEXTSTATE_REDIS_URL": redis_url, "NEXTSTATE_HOME": str(tmp_path / "home"),
           "NEXTSTATE_ADAPTERS_DIR": str(registry.root), "NEXTSTATE_BASE_MODEL": "tiny-chat",
           "NEXTSTATE_POLICY_URLS": json.dumps([url for _, url in replicas])}
    done = subprocess.run([sys.executable, "-m", "nextstate", "controller", "--once"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    assert "canary v1 started" in done.stdout
    assert registry.alias("canary") == "v1" and [set(app.state.loaded) for app, _ in replicas] == [{"tiny-chat@v1"}] * 2


def test_a_version_trained_on_the_canary_waits_for_its_promotion(control: Control, publish: PublishFn,
                                                                  replicas: list[Any]) -> None:
    controller = Controller(control, POLICY)
    stable, canary = started(controller, control, publish)
    child = publish(parent=canary, gate=True)  # trained while the canary was running, on top of it
    sibling = publish(parent=stable, gate=True)  # an older-style candidate that would replace the canary
    actions = run_until_done(controller, control, canary, stable, 0.8, 0.8)
    assert actions[-1] == "promote"
    decision = controller.tick()  # the next canary: the child extends the new stable, the sibling does not
    assert decision is not None and decision.evidence == {"version": child}
    assert control.registry.alias("canary") == child
    assert control.registry.get(sibling).state == "gated_pass"  # never canaried: it does not extend stable


def test_the_tip_of_a_chain_waiting_behind_the_canary_is_canaried_next(control: Control, publish: PublishFn,
                                                                      replicas: list[Any]) -> None:
    """Versions trained one on top of the other while a canary ran: one canary ships all of them."""
    controller = Controller(control, POLICY)
    stable, canary = started(controller, control, publish)
    first = publish(parent=canary, gate=True)
    second = publish(parent=first, gate=True)
    publish(parent=second, gate=False)  # a failed link ends the chain
    assert run_until_done(controller, control, canary, stable, 0.8, 0.8)[-1] == "promote"
    decision = controller.tick()
    assert decision is not None and decision.evidence == {"version": second}
    assert control.registry.alias("canary") == second and control.registry.get(first).state == "gated_pass"
    started_event = [e for e in control.registry.history() if e.kind == "canary_started" and e.version == second]
    assert started_event and started_event[0].reason.endswith(f"it carries the training of {first}")


def test_a_version_whose_parent_was_rolled_back_is_rejected_as_stale(control: Control, publish: PublishFn,
                                                                    replicas: list[Any]) -> None:
    controller = Controller(control, POLICY)
    _, canary = started(controller, control, publish)
    child = publish(parent=canary, gate=True)
    control.rollback("operator", "bad canary")
    assert controller.tick() is None  # nothing extends stable
    assert control.registry.get(child).state == "rejected"
    stale = [e for e in control.registry.history() if e.kind == "rejected" and e.version == child]
    assert stale and "stale lineage" in stale[0].reason


def test_a_canary_started_by_the_gate_meanwhile_is_no_controller_error(control: Control, publish: PublishFn,
                                                                      replicas: list[Any]) -> None:
    controller = Controller(control, POLICY)
    first = publish(gate=True)
    second = publish(gate=True)
    control.start_canary(first, 0.5, "gate", "passed the sacred gate")  # between the controller's read and its start
    assert controller._start_next() is None  # it would have started the newest ready version, second
    assert control.registry.alias("canary") == first and control.registry.get(second).state == "gated_pass"
    assert not [e for e in control.registry.history() if e.kind == "controller_error"]
