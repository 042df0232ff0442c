"""Continuous mode: trains when a batch of trainable samples is waiting, acks the rest, exports metrics."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import redis
from prometheus_client import start_http_server

from labeler.records import SAMPLES_STREAM
from learner.learn import Learner, LearnerSettings, Metrics, run_continuous
from tests.learner.test_learn_once import push
from tests.support.servers import free_port


def test_continuous_round_publishes_and_exports_metrics(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, tiny_model_path: Path
) -> None:
    settings = LearnerSettings(home=tmp_path, redis_url=redis_url, base_model=str(tiny_model_path), device="cpu",
                               batch_size=2, learner_poll_ms=50, learner_gate=False)
    learner = Learner(settings, redis_client)
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
