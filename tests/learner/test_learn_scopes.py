"""The learner batches per learning scope: each scope's candidate holds that scope's samples only, and a
personal lineage starts from the global stable."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis

from labeler.records import SAMPLES_STREAM, SampleRecord
from learner.continuous import Metrics, run_continuous
from learner.learn import Learner
from learner.learner_settings import LearnerSettings
from registry.records import GateVerdict


def push(client: redis.Redis, scope: str, turn: str, hint: str | None = None, session: str | None = None) -> None:
    record = SampleRecord(
        record_id=f"{turn}:r0", sample_id=turn, turn_id=turn, session_id=session or f"s-{scope}", cls="avoid", reward=-1,
        hint=hint, scope=scope, messages=[{"role": "user", "content": f"What is the capital of {turn}?"}],
        response={"role": "assistant", "content": f"The capital of {turn} is somewhere. It is nice."},
    )
    client.xadd(SAMPLES_STREAM, {"record": record.model_dump_json()})


@pytest.mark.slow
def test_each_scope_trains_its_own_samples_only(tmp_path: Path, redis_url: str, redis_client: redis.Redis,
                                                tiny_model_path: Path) -> None:
    settings = LearnerSettings(home=tmp_path, redis_url=redis_url, base_model=str(tiny_model_path), device="cpu",
                               batch_size=2, steps_per_batch=1, learner_poll_ms=50, learner_gate=False,
                               retain_samples=2, hint_demos=1, demo_honoured_only=False)
    learner = Learner(settings, redis_client)
    # interleaved: alice's hint (and its demonstrations) must never reach the global lineage
    push(redis_client, "global", "Chile")
    push(redis_client, "alice", "Peru", hint="Answer in lowercase.")
    push(redis_client, "bob", "Cuba")
    push(redis_client, "alice", "Oman", hint="Answer in lowercase.")
    push(redis_client, "global", "Fiji")
    assert run_continuous(learner, threading.Event(), Metrics(), rounds=2) == 0
    shared, alice, bob = (learner.registry.scoped(s) for s in ("global", "alice", "bob"))
    assert sorted(alice.manifest("v1").sample_ids) == ["Oman", "Peru"]
    assert sorted(shared.manifest("v1").sample_ids) == ["Chile", "Fiji"]
    assert bob.versions() == []  # one sample is not a batch: it waits, in its own scope
    assert alice.manifest("v1").scope == "alice" and alice.get("v1").served_name.endswith("@alice-v1")
    assert alice.manifest("v1").metrics["demo_samples"] >= 1 and shared.manifest("v1").metrics["demo_samples"] == 0
    assert redis_client.xpending(SAMPLES_STREAM, "learner")["pending"] == 1  # bob's

    # the global v1 becomes stable; bob's lineage then starts from it
    shared.record_gate("v1", GateVerdict(passed=True))
    shared.set_state("v1", "canary", "test")
    shared.set_state("v1", "promoted", "test")
    shared.set_alias("stable", "v1", "test")
    push(redis_client, "bob", "Laos")
    assert run_continuous(learner, threading.Event(), Metrics(), rounds=1) == 0
    manifest = bob.manifest("v1")
    assert sorted(manifest.sample_ids) == ["Cuba", "Laos"]
    assert manifest.parent is None and manifest.started_from == "v1" and manifest.scope == "bob"
    assert [v.version for v in shared.versions()] == ["v1"] and [v.version for v in alice.versions()] == ["v1"]


@pytest.mark.slow
def test_in_the_shared_scope_a_hint_is_demonstrated_only_in_its_own_conversation(
        tmp_path: Path, redis_url: str, redis_client: redis.Redis, tiny_model_path: Path) -> None:
    # the tiny preset demonstrates a hint on every context of a personal scope's batch; in the shared scope
    # one user's hint must not become a demonstration on another user's question
    settings = LearnerSettings(home=tmp_path, redis_url=redis_url, base_model=str(tiny_model_path), device="cpu",
                               batch_size=2, steps_per_batch=1, learner_poll_ms=50, learner_gate=False,
                               retain_samples=2, hint_demos=1, demo_honoured_only=False)  # count every one drawn
    learner = Learner(settings, redis_client)
    assert learner.config.demo_scope == "batch"
    for scope in ("global", "alice"):
        push(redis_client, scope, f"Peru-{scope}", hint="Answer in lowercase.", session=f"{scope}-1")
        push(redis_client, scope, f"Chile-{scope}", session=f"{scope}-2")
    run_continuous(learner, threading.Event(), Metrics(), rounds=2)
    shared, alice = (learner.registry.scoped(s) for s in ("global", "alice"))
    assert shared.manifest("v1").metrics["demo_samples"] == 1  # the hinted conversation's one context
    assert alice.manifest("v1").metrics["demo_samples"] == 2  # both of the one user's contexts
