"""A learner SIGKILLed mid-publish — with the adapter half-written in staging, and with the version
directory renamed into place but not yet recorded: no partial version is ever visible, and the next
learner trains the same samples into one complete version and, starting, sweeps what the kills left.
(Killed mid-training: tests/learner/test_learn_crash.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from labeler.records import SAMPLES_STREAM
from learner import learn
from registry.errors import RegistryError
from registry.store import Registry
from tests.faults.conftest import SUITE
from tests.learner.test_learn_once import push
from tests.support import figures

ROOT = Path(__file__).resolve().parents[2]
TURNS = ["France", "Japan", "Italy", "Spain"]
FAST = ["--steps-per-batch", "1"]  # what is under test is publishing, not learning


@pytest.mark.slow
def test_learner_killed_mid_publish_leaves_no_partial_version(tmp_path: Path, redis_url: str, redis_client: redis.Redis,
                                                              tiny_model_path: Path) -> None:
    env = {"NEXTSTATE_HOME": str(tmp_path / "home"), "NEXTSTATE_REDIS_URL": redis_url,
           "NEXTSTATE_BASE_MODEL": str(tiny_model_path), "NEXTSTATE_DEVICE": "cpu"}
    for i, turn in enumerate(TURNS):
        push(redis_client, turn, "prefer" if i % 2 else "avoid", 1 if i % 2 else -1)
    registry = Registry(redis_client, Path(env["NEXTSTATE_HOME"]) / "adapters")
    partial = 0
    for point in ("staging", "record"):
        proc = subprocess.run([sys.executable, "-m", "tests.faults.learner_child", point, "--once", "--no-gate", *FAST],
                              cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=240)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        figures.add(SUITE, "faults injected: learner SIGKILLed mid-publish")
        visible = registry.versions()
        partial += len(visible)
        assert visible == [], f"killed at {point}: {visible}"
        assert registry.history() == []
        assert redis_client.xpending(SAMPLES_STREAM, "learner")["pending"] == len(TURNS)  # nothing acked
    # what the two kills left on disk: a staging directory without manifest, a renamed v2 without a record
    left = sorted(p.name for p in registry.root.iterdir())
    assert [n for n in left if not n.startswith(".")] == ["v2"] and any(n.startswith(".tmp-v1-") for n in left)
    assert not (registry.root / left[0] / "manifest.json").exists()
    with pytest.raises(RegistryError):
        registry.check_loadable("v2")

    # the next learner, a process of its own too (it configures logging for its whole process); with a grace
    # period this short its start-up sweep removes what the killed ones left
    proc = subprocess.run([sys.executable, "-m", "learner", "learn", "--once", "--no-gate", *FAST],
                          cwd=ROOT, env={**os.environ, **env, "NEXTSTATE_STAGING_GRACE_S": "0.001"},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == learn.EXIT_PUBLISHED, proc.stderr[-2000:]
    (version,) = registry.versions()
    registry.check_loadable(version.version)
    assert sorted(p.name for p in registry.root.iterdir()) == [version.version]
    assert proc.stdout.count("publish_leftover_removed") + proc.stderr.count("publish_leftover_removed") == 2
    trained = registry.manifest(version.version).sample_ids
    assert sorted(trained) == sorted(TURNS)
    assert redis_client.xpending(SAMPLES_STREAM, "learner")["pending"] == 0
    assert [e.kind for e in registry.history()] == ["candidate_created"]
    figures.add(SUITE, "partial versions visible", partial)
    figures.add(SUITE, "samples lost after a learner kill", len(set(TURNS) - set(trained)))
    figures.add(SUITE, "samples trained twice after a learner kill", len(trained) - len(set(trained)))
