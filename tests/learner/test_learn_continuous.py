"""Continuous mode: trains when a batch of trainable samples is waiting, acks the rest, exports metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
from prometheus_client import start_http_server

from labeler.records import SAMPLES_STREAM
from learner.continuous import Metrics, run_continuous
from learner.learn import Learner
from learner.learner_settings import LearnerSettings
from registry.records import GateVerdict, LearnerState, learner_state_key
from tests.learner.test_learn_once import push
from tests.support.servers import free_port


def _ungated_learner(tmp_path: Path, redis_url: str, redis_client: redis.Redis, tiny_model_path: Path) -> Learner:
    settings = LearnerSettings(home=tmp_path, redis_url=redis_url, base_model=str(tiny_model_path), device="cpu",
                               batch_size=2, learner_poll_ms=50, learner_gate=False, retain_samples=4)
    return Learner(settings, redis_client)


def test_continuous_round_publishes_and_exports_metrics(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, tiny_model_path: Path
) -> None:
    learner = _ungated_learner(tmp_path, redis_url, redis_client, tiny_model_path)
    metrics = Metrics()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        push(redis_client, "Japan", "observation", 0)
        push(redis_client, "Cuba", "prefer", 1)
        # one trainable sample is not a batch: nothing is trained, the observation is acked at once
        stop = threading.Event()
        timer = threading.Timer(0.5, lambda: stop.set())
        timer.start()
        run_continuous(learner, stop, metrics, rounds=1)
        assert learner.registry.versions() == []
        assert redis_client.xpending(SAMPLES_STREAM, "learner")["pending"] == 1  # only the trainable one waits
        assert metrics.registry.get_sample_value("nextstate_learner_pending_samples") == 1

        push(redis_client, "Norway", "avoid", -1, hint="Answer in lowercase.")
        assert run_continuous(learner, threading.Event(), metrics, rounds=1) == 0
        assert [v.version for v in learner.registry.versions()] == ["v1"]
        assert sorted(learner.registry.manifest("v1").sample_ids) == ["Cuba", "Norway"]
        assert redis_client.xpending(SAMPLES_STREAM, "learner")["pending"] == 0
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'nextstate_learner_rounds_total{status="published"} 1.0' in body
        assert "nextstate_learner_samples_total 2.0" in body
        assert 'nextstate_learner_last{metric="kl_parent"}' in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_samples_of_a_gate_failed_candidate_join_the_next_round(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, tiny_model_path: Path
) -> None:
    # a one-case suite and no drift allowed: every trained candidate fails the gate, deterministically
    suite = tmp_path / "suite.jsonl"
    suite.write_text('{"id": "anchor", "anchor": true, "prompt": "What color is grass?"}\n')
    settings = LearnerSettings(home=tmp_path, redis_url=redis_url, base_model=str(tiny_model_path), device="cpu",
                               batch_size=2, learner_poll_ms=50, gate_suite=suite, gate_max_kl=0.0,
                               gate_auto_canary=False, learner_retries=1, retain_samples=4)
    learner = Learner(settings, redis_client)
    metrics = Metrics()
    for turn in ("Cuba", "Peru"):
        push(redis_client, turn, "prefer", 1)
    run_continuous(learner, threading.Event(), metrics, rounds=1)
    assert learner.registry.get("v1").state == "gated_fail"
    for turn in ("Chile", "Kenya"):
        push(redis_client, turn, "avoid", -1, hint="Answer in lowercase.")
    run_continuous(learner, threading.Event(), metrics, rounds=1)  # v1's samples are retried beside the new ones
    assert sorted(learner.registry.manifest("v2").sample_ids) == ["Chile", "Cuba", "Kenya", "Peru"]
    # two batches' samples in one batch: the candidate takes one batch's steps from its parent, not two
    assert learner.registry.manifest("v2").metrics["steps"] == learner.config.steps_per_batch
    assert learner.registry.get("v2").state == "gated_fail"
    for turn in ("Egypt", "Oslo"):
        push(redis_client, turn, "prefer", 1)
    run_continuous(learner, threading.Event(), metrics, rounds=1)  # Cuba and Peru used their one retry
    assert sorted(learner.registry.manifest("v3").sample_ids) == ["Chile", "Egypt", "Kenya", "Oslo"]
    assert redis_client.xpending(SAMPLES_STREAM, "learner")["pending"] == 0
    assert metrics.registry.get_sample_value("nextstate_learner_rounds_total", {"status": "gate_failed"}) == 3


def test_samples_of_a_rolled_back_lineage_join_the_next_round_and_forgotten_ones_do_not(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, tiny_model_path: Path
) -> None:
    learner = _ungated_learner(tmp_path, redis_url, redis_client, tiny_model_path)
    metrics = Metrics()
    reg = learner.registry
    for turn in ("Cuba", "Peru"):
        push(redis_client, turn, "prefer", 1)
    run_continuous(learner, threading.Event(), metrics, rounds=1)
    reg.record_gate("v1", GateVerdict(passed=True))
    for turn in ("Chile", "Kenya"):
        push(redis_client, turn, "avoid", -1, hint="Answer in lowercase.")
    run_continuous(learner, threading.Event(), metrics, rounds=1)  # v2 on top of v1: v1's samples are in its lineage
    assert reg.manifest("v2").parent == "v1" and sorted(reg.manifest("v2").sample_ids) == ["Chile", "Kenya"]
    reg.record_gate("v2", GateVerdict(passed=True))
    reg.set_state("v1", "rejected", "controller", "inconclusive")  # the canary gave up on the lineage v1 -> v2
    reg.set_state("v2", "rejected", "controller", "inconclusive")
    peru = next(i for i, f in redis_client.xrange(SAMPLES_STREAM) if b'"Peru"' in f[b"record"])
    redis_client.xdel(SAMPLES_STREAM, peru)  # the user had Peru forgotten meanwhile
    for turn in ("Egypt", "Oslo"):
        push(redis_client, turn, "prefer", 1)
    run_continuous(learner, threading.Event(), metrics, rounds=1)
    # from stable again (the base model), with the newest of what v1 and v2 were taught: a round trains at most
    # two batches (here 2 x 2 samples), so Cuba waits; Peru is gone
    assert reg.manifest("v3").parent is None
    assert sorted(reg.manifest("v3").sample_ids) == ["Chile", "Egypt", "Kenya", "Oslo"]
    assert metrics.registry.get_sample_value("nextstate_learner_recalled_samples_total") == 2
    assert redis_client.xpending(SAMPLES_STREAM, "learner")["pending"] == 0


def test_a_backlog_is_trained_a_bounded_round_at_a_time_oldest_first(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, tiny_model_path: Path
) -> None:
    settings = LearnerSettings(home=tmp_path, redis_url=redis_url, base_model=str(tiny_model_path), device="cpu",
                               batch_size=2, learner_poll_ms=50, learner_gate=False, retain_samples=4,
                               learner_round_max=3, learner_retries=0)  # no recall of v1 (never gated)
    learner = Learner(settings, redis_client)
    for turn in ("Cuba", "Peru", "Chile", "Kenya", "Egypt"):
        push(redis_client, turn, "prefer", 1)
    run_continuous(learner, threading.Event(), Metrics(), rounds=1)
    assert sorted(learner.registry.manifest("v1").sample_ids) == ["Chile", "Cuba", "Peru"]
    assert [e.sample.sample_id for e in learner.held if e.sample] == ["Kenya", "Egypt"]  # they wait, not lost
    run_continuous(learner, threading.Event(), Metrics(), rounds=1)
    assert sorted(learner.registry.manifest("v2").sample_ids) == ["Egypt", "Kenya"]
    assert redis_client.xpending(SAMPLES_STREAM, "learner")["pending"] == 0


def test_the_learner_says_what_it_is_doing(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, tiny_model_path: Path
) -> None:
    learner = _ungated_learner(tmp_path, redis_url, redis_client, tiny_model_path)
    key = learner_state_key(learner.reader.consumer)
    seen: list[LearnerState] = []

    def newest() -> str:
        return str(redis_client.xrevrange(SAMPLES_STREAM, count=1)[0][0].decode())

    def state() -> LearnerState | None:
        raw = redis_client.get(key)
        said = LearnerState.model_validate_json(raw) if raw else None
        if said is not None and (not seen or said.model_dump(exclude={"at"}) != seen[-1].model_dump(exclude={"at"})):
            seen.append(said)
        return said

    stop = threading.Event()
    worker = threading.Thread(target=run_continuous, args=(learner, stop, Metrics()), daemon=True)
    worker.start()
    try:
        push(redis_client, "Cuba", "prefer", 1)
        first = newest()
        _poll(lambda: (s := state()) is not None and s.seen == first)
        assert (seen[-1].state, seen[-1].held) == ("waiting", 1)  # one trainable sample is not a batch
        assert seen[-1].behind(first) is False and seen[-1].behind(redis_client.xadd("other", {"x": 1}).decode())
        push(redis_client, "Norway", "avoid", -1, hint="Answer in lowercase.")
        second = newest()
        _poll(lambda: (s := state()) is not None and s.state == "waiting" and s.seen == second)
        assert [(s.state, s.held, s.seen) for s in seen[1:]] == [("training", 2, second), ("waiting", 0, second)]
        assert [v.version for v in learner.registry.versions()] == ["v1"]
    finally:
        stop.set()
        worker.join(timeout=30)
    assert redis_client.get(key) is None  # a stopped learner says nothing


def _poll(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
