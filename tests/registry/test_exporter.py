"""The Prometheus exporter against a real Redis: a real registry, real RQ jobs run by a real worker,
consumer groups on real streams, scraped over HTTP; and the ``python -m registry.exporter`` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from rq import Queue

from labeler.records import HARD_QUEUE, LABEL_QUEUE, SAMPLES_STREAM, SampleRecord
from labeler.worker import InlineWorker
from proxy.records import TRANSITIONS_STREAM
from registry.actions import Control
from registry.exporter import build_registry
from registry.publisher import Publisher
from registry.records import UPSTREAM_OUTCOMES_KEY
from registry.store import Registry
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_registry(registry: CollectorRegistry) -> Scrape:
    from prometheus_client import generate_latest

    return parse(generate_latest(registry).decode())


def parse(text: str) -> Scrape:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scrape: Scrape, name: str, **labels: str) -> float:
    return scrape[(name, tuple(sorted(labels.items())))]


def sample(turn: str, version: str | None, cls: str, judge_ms: float, agreement: float, hard: bool = False) -> SampleRecord:
    reward = {"prefer": 1, "avoid": -1, "observation": 0}[cls]
    return SampleRecord(record_id=f"{turn}:r0", sample_id=f"{turn}:r0", turn_id=turn, session_id="s", cls=cls,
                        reward=reward, serving_version=version, votes=[reward, reward, 1], agreement=agreement,
                        hard=hard, timings={"judge_ms": judge_ms}, messages=[], response={})


def test_exporter_reports_the_stack(redis_client: redis.Redis, registry: Registry,
                                    publish: Callable[..., str]) -> None:
    # registry: v1 promoted, v2 failed the gate, v3 in canary at 5%
    v1 = publish(gate=True)
    publish(parent=v1, gate=False)
    v3 = publish(parent=v1, gate=True)
    control = Control(registry, Publisher(urls=[], drain_seconds=0.0))
    control.promote(v1, actor="operator", reason="first")
    control.start_canary(v3, 0.05, actor="controller")
    time.sleep(0.01)
    # samples: 3 before the canary on v1, then per arm; served names as the proxy may record them
    for i, (version, cls) in enumerate([("v1", "prefer"), ("v1", "avoid"), ("tiny-chat@v1", "prefer"),
                                        ("v3", "prefer"), ("tiny-chat@v3", "prefer"), ("v3", "avoid"),
                                        (None, "observation")]):
        redis_client.xadd(SAMPLES_STREAM, {"record": sample(f"t{i}", version, cls, 100.0 * (i + 1),
                                                             1.0 if i % 2 else 2 / 3, hard=i == 6).model_dump_json()})
    # a consumer group that has read one of three transitions and acknowledged none
    for i in range(3):
        redis_client.xadd(TRANSITIONS_STREAM, {"record": f"{i}"})
    redis_client.xgroup_create(TRANSITIONS_STREAM, "labeler", id="0")
    redis_client.xreadgroup("labeler", "c1", {TRANSITIONS_STREAM: ">"}, count=1)
    # RQ: one job fails and one finishes under a real worker, two more stay queued
    label = Queue(LABEL_QUEUE, connection=redis_client)
    label.enqueue("labeler.export.parse_since", "not a date")
    label.enqueue("labeler.export.parse_since", "2026-01-01")
    InlineWorker([label], connection=redis_client).work(burst=True)
    label.enqueue("labeler.export.parse_since", "2026-01-02")
    Queue(HARD_QUEUE, connection=redis_client).enqueue("labeler.export.parse_since", "2026-01-03")
    redis_client.hset(UPSTREAM_OUTCOMES_KEY, mapping={"v3:ok": 40, "v3:error": 2})

    registry_ = build_registry(redis_client)
    m = scrape_registry(registry_)
    assert value(m, "nextstate_exporter_up") == 1
    assert value(m, "nextstate_stream_length", stream=SAMPLES_STREAM) == 7
    assert value(m, "nextstate_stream_consumer_lag", stream=TRANSITIONS_STREAM, group="labeler") == 2
    assert value(m, "nextstate_stream_consumer_pending", stream=TRANSITIONS_STREAM, group="labeler") == 1
    assert value(m, "nextstate_rq_jobs", queue="label", state="queued") == 1
    assert value(m, "nextstate_rq_jobs", queue="label", state="failed") == 1
    assert value(m, "nextstate_rq_jobs", queue="label", state="finished") == 1
    assert value(m, "nextstate_rq_jobs", queue="hard", state="queued") == 1
    assert value(m, "nextstate_reward_rate", version="v1") == pytest.approx(2 / 3)
    assert value(m, "nextstate_reward_rate", version="v3") == pytest.approx(2 / 3)
    assert value(m, "nextstate_samples_window", version="base", label="observation") == 1
    assert value(m, "nextstate_samples_hard_window") == 1
    assert value(m, "nextstate_judge_latency_seconds", quantile="0.5") == pytest.approx(0.4)
    assert value(m, "nextstate_judge_latency_seconds", quantile="0.99") == pytest.approx(0.7)
    assert value(m, "nextstate_judge_vote_agreement_ratio", quantile="0.5") == pytest.approx(2 / 3)
    assert value(m, "nextstate_registry_versions", state="promoted") == 1
    assert value(m, "nextstate_registry_versions", state="gated_fail") == 1
    assert value(m, "nextstate_registry_versions", state="canary") == 1
    assert value(m, "nextstate_registry_alias_info", alias="stable", version=v1) == 1
    assert value(m, "nextstate_gate_verdicts_total", verdict="pass") == 2
    assert value(m, "nextstate_gate_verdicts_total", verdict="fail") == 1
    assert value(m, "nextstate_registry_decisions_total", kind="promoted") == 1
    assert value(m, "nextstate_registry_decisions_total", kind="canary_started") == 1
    assert value(m, "nextstate_registry_decisions_total", kind="rolled_back") == 0
    assert value(m, "nextstate_canary_fraction") == 0.05
    assert value(m, "nextstate_canary_info", version=v3, stable=v1, step="0") == 1
    assert value(m, "nextstate_canary_samples", arm="canary", label="prefer") == 2
    assert value(m, "nextstate_canary_samples", arm="stable", label="prefer") == 2
    assert value(m, "nextstate_canary_reward_rate", arm="canary", bound="estimate") == pytest.approx(2 / 3)
    assert value(m, "nextstate_canary_rate_difference", bound="estimate") == pytest.approx(0.0)
    assert -1 <= value(m, "nextstate_canary_rate_difference", bound="low") < 0 < value(
        m, "nextstate_canary_rate_difference", bound="high") <= 1
    assert value(m, "nextstate_upstream_outcomes_total", version="v3", outcome="error") == 2

    # decisions are counted once each, incrementally, as the log grows
    control.rollback(actor="controller", reason="worse than stable")
    m = scrape_registry(registry_)
    assert value(m, "nextstate_registry_decisions_total", kind="rolled_back") == 1
    assert value(m, "nextstate_registry_decisions_total", kind="promoted") == 1
    assert value(m, "nextstate_canary_fraction") == 0


def test_exporter_reports_down_when_redis_is_gone(private_redis: object) -> None:
    client = private_redis.client(socket_timeout=1, socket_connect_timeout=1)  # type: ignore[attr-defined]
    registry = build_registry(client)
    assert value(scrape_registry(registry), "nextstate_exporter_up") == 1
    private_redis.stop()  # type: ignore[attr-defined]
    assert parse_only_up(scrape_registry(registry)) == 0
    client.close()


def parse_only_up(scrape: Scrape) -> float:
    assert {name for name, _ in scrape} == {"nextstate_exporter_up"}
    return value(scrape, "nextstate_exporter_up")


def test_exporter_process_serves_metrics(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.xadd(SAMPLES_STREAM, {"record": sample("p", "v1", "prefer", 50.0, 1.0).model_dump_json()})
    port = free_port()
    env = {**os.environ, "NEXTSTATE_REDIS_URL": redis_url, "NEXTSTATE_LOG_JSON": "true"}
    process = subprocess.Popen([sys.executable, "-m", "registry.exporter", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None, "exporter did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        scrape = parse(response.text)
        assert value(scrape, "nextstate_stream_length", stream=SAMPLES_STREAM) == 1
        assert value(scrape, "nextstate_reward_rate", version="v1") == 1
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert "exporter_stopped" in stderr


def test_exporter_sums_the_personal_scopes(control: Control, adapter_files: Path) -> None:
    from tests.registry.test_scopes import publish_in

    alice, bob = control.scoped("alice"), control.scoped("bob")
    alice.promote(publish_in(alice.registry, adapter_files), "operator", "test")
    bob.start_canary(publish_in(bob.registry, adapter_files), 0.5, "operator")
    publish_in(bob.registry, adapter_files)  # passed the gate, waiting
    scrape = scrape_registry(build_registry(control.registry.redis))
    assert value(scrape, "nextstate_personal_scopes") == 2 and value(scrape, "nextstate_personal_scopes_read") == 2
    assert {state: value(scrape, "nextstate_personal_versions", state=state)
            for state in ("promoted", "canary", "gated_pass", "rejected")} == {
        "promoted": 1, "canary": 1, "gated_pass": 1, "rejected": 0}
    assert value(scrape, "nextstate_personal_stables") == 1 and value(scrape, "nextstate_personal_canaries") == 1
    # the shared scope's own counts are its own
    assert value(scrape, "nextstate_registry_versions", state="promoted") == 0
    assert value(scrape, "nextstate_registry_versions", state="canary") == 0
