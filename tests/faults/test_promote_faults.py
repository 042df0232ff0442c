"""A controller SIGKILLed at every write of a promotion: no alias ever names a missing or unpromoted
version, and the promotion, decided again after the restart, is logged exactly once."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from itertools import count
from pathlib import Path
from typing import Any

import redis

from registry.actions import Control
from registry.errors import RegistryError
from registry.store import Registry
from tests.faults.conftest import SUITE
from tests.registry.conftest import PublishFn, adapter_files, control, publish, registry, replicas  # noqa: F401
from tests.support import figures

ROOT = Path(__file__).resolve().parents[2]


def dangling(registry: Registry) -> list[str]:  # noqa: F811  (the fixture name, as a parameter)
    """Aliases that name a version that is unknown, not loadable, or in the wrong state for the alias."""
    found = []
    canary = registry.canary_state()
    for alias, version in registry.aliases().items():
        if version is None:
            continue
        try:
            state = registry.check_loadable(version).state
        except RegistryError as exc:
            found.append(f"{alias} -> {version}: {exc}")
            continue
        if alias == "stable" and state != "promoted":
            found.append(f"stable -> {version} which is {state}")
        if alias == "canary" and (state != "canary" or canary is None or canary.version != version):
            found.append(f"canary -> {version} which is {state} (canary state {canary})")
    for info in registry.versions():
        if info.state == "promoted" and info.version not in (registry.alias("stable"), registry.alias("previous")):
            found.append(f"{info.version} is promoted but no alias names it")
    return found


def test_controller_killed_at_each_write_of_a_promotion(redis_client: redis.Redis, redis_url: str, registry: Registry,  # noqa: F811
                                                        control: Control, publish: PublishFn,  # noqa: F811
                                                        replicas: list[Any]) -> None:  # noqa: F811
    socket = redis_url.removeprefix("unix://")
    kills = twice = 0
    for kill_at in count(1):
        redis_client.flushall()
        shutil.rmtree(registry.root)
        registry.root.mkdir(parents=True)
        stable = publish(gate=True)
        control.promote(stable, "operator", "first stable")
        canary = publish(parent=stable, gate=True)
        control.start_canary(canary, 0.05, "controller")
        proc = subprocess.run([sys.executable, "-m", "tests.faults.promote_child", socket, str(registry.root),
                               str(kill_at), *(url for _, url in replicas)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            break  # this promotion had fewer writes than kill_at: every earlier one was killed
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        kills += 1
        figures.add(SUITE, "faults injected: controller SIGKILLed mid-promotion")
        left = dangling(registry)
        figures.add(SUITE, "dangling aliases after a kill", len(left))
        assert left == [], f"killed before write {kill_at}: {left}"

        # the restarted controller: the dead one's lease runs out (within DEFAULT_LEASE_S: test_lock_faults;
        # cut short here), the canary (if still running) is decided again
        redis_client.pexpire(registry.keys.lock, 1)
        if registry.canary_state() is not None:
            Control(registry, control.publisher).promote(None, "controller", "canary not worse than stable")
        assert registry.aliases() == {"stable": canary, "canary": None, "previous": stable}
        decisions = [e for e in registry.history() if e.kind == "promoted" and e.version == canary]
        moves = [e for e in registry.history() if e.kind == "alias_changed" and e.evidence["alias"] == "stable"
                 and e.version == canary]
        twice += max(0, len(decisions) - 1) + max(0, len(moves) - 1)
        assert len(decisions) == 1 and len(moves) == 1, f"killed before write {kill_at}"
    figures.add(SUITE, "promotion decisions logged twice", twice)
    assert kills >= 2, "the promotion was never interrupted between two writes"
    assert dangling(registry) == []
