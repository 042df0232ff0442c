"""Crash safety: SIGKILL the learner mid-train; nothing partial is visible and the next run trains the samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from labeler.records import SAMPLES_STREAM
from learner import learn
from registry.records import COUNTER_KEY
from registry.store import Registry
from tests.learner.test_learn_once import push
from tests.support import figures

ROOT = Path(__file__).resolve().parents[2]


def wait_for_event(proc: subprocess.Popen[str], event: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"learner exited ({proc.poll()}) before logging {event!r}")
        try:
            if json.loads(line).get("event") == event:
                return
        except ValueError:
            continue  # progress bar output
    raise AssertionError(f"no {event!r} within {timeout} s")


@pytest.mark.slow
def test_sigkill_mid_train_leaves_no_version_and_the_next_run_trains_the_samples(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"NEXTSTATE_HOME": str(tmp_path / "home"), "NEXTSTATE_REDIS_URL": redis_url,
           "NEXTSTATE_BASE_MODEL": str(tiny_model_path), "NEXTSTATE_LOG_JSON": "true", "NEXTSTATE_DEVICE": "cpu"}
    turns = ["France", "Japan", "Italy", "Spain", "Egypt", "Peru"]
    for i, turn in enumerate(turns):
        push(redis_client, turn, "prefer" if i % 2 else "avoid", 1 if i % 2 else -1)
    # many steps per batch so the kill lands while training
    proc = subprocess.Popen(
        [sys.executable, "-m", "learner", "learn", "--once", "--no-gate", "--steps-per-batch", "500"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_event(proc, "training", timeout=240)
        time.sleep(2.0)
        assert proc.poll() is None, "the learner finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    figures.add("faults", "faults injected: learner SIGKILLed mid-training")  # the fault suite's summary

    registry = Registry(redis_client, Path(env["NEXTSTATE_HOME"]) / "adapters")
    figures.add("faults", "partial versions visible", len(registry.versions()))
    assert registry.versions() == []
    assert [p.name for p in registry.root.iterdir() if not p.name.startswith(".")] == []
    assert redis_client.get(COUNTER_KEY) is None  # no version number was even reserved
    assert registry.history() == []
    assert redis_client.xpending(SAMPLES_STREAM, "learner")["pending"] == len(turns)

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert learn.main(["--once", "--no-gate"]) == learn.EXIT_PUBLISHED
    trained = registry.manifest("v1").sample_ids
    figures.add("faults", "samples lost after a learner kill", len(set(turns) - set(trained)))
    figures.add("faults", "samples trained twice after a learner kill", len(trained) - len(set(trained)))
    assert sorted(trained) == sorted(turns)
    assert redis_client.xpending(SAMPLES_STREAM, "learner")["pending"] == 0
