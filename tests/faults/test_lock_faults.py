"""The registry lock is a renewed lease: a holder SIGKILLed while it holds the lock blocks the next action
for at most one lease, a live holder is never overtaken, and a holder that lost its lease (stopped past it)
cannot commit over its successor."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import LockError

from registry.actions import Control
from registry.lease import DEFAULT_LEASE_S
from registry.store import Registry
from tests.faults.conftest import SUITE
from tests.registry.conftest import PublishFn, adapter_files, control, publish, registry, replicas  # noqa: F401
from tests.support import figures

ROOT = Path(__file__).resolve().parents[2]


def _child(redis_url: str, registry: Registry, lease_s: float, mode: str) -> subprocess.Popen[str]:  # noqa: F811
    proc = subprocess.Popen([sys.executable, "-m", "tests.faults.lock_child", redis_url.removeprefix("unix://"),
                             str(registry.root), str(lease_s), mode],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held", proc.stderr
    return proc


def test_a_dead_holders_lock_frees_itself_within_one_lease(redis_url: str, redis_client: redis.Redis,
                                                           registry: Registry, control: Control,  # noqa: F811
                                                           publish: PublishFn, replicas: list[Any]) -> None:  # noqa: F811
    stable = publish(gate=True)
    control.promote(stable, "operator", "first stable")
    canary = publish(parent=stable, gate=True)
    control.start_canary(canary, 0.05, "controller")
    proc = _child(redis_url, registry, DEFAULT_LEASE_S, "die")
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    figures.add(SUITE, "faults injected: lock holder SIGKILLed")
    assert redis_client.pttl(registry.keys.lock) > 0  # the dead process still holds it: nobody released it
    started = time.monotonic()
    control.promote(None, "controller", "canary not worse than stable")  # the restarted controller's action
    waited = time.monotonic() - started
    figures.add(SUITE, "seconds an action waited for a dead holder's lock", round(waited, 1))
    assert waited <= DEFAULT_LEASE_S + 1.0
    assert registry.aliases() == {"stable": canary, "canary": None, "previous": stable}


def test_a_live_holder_is_never_overtaken_and_a_lost_lease_writes_nothing(redis_url: str, registry: Registry,  # noqa: F811
                                                                           redis_client: redis.Redis) -> None:
    lease_s = 0.6
    proc = _child(redis_url, registry, lease_s, "commit")
    try:
        # the holder renews its lease: for many leases nobody else gets the lock
        deadline = time.monotonic() + 6 * lease_s
        while time.monotonic() < deadline:
            with pytest.raises(LockError), registry.lock(wait=0.2):
                pass
        # a holder stopped past its lease loses it; the next one takes over at once ...
        proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with registry.lock(wait=5):
            assert time.monotonic() - started <= lease_s + 1.0
            proc.send_signal(signal.SIGCONT)
            # ... and the old holder, woken while its successor acts, commits nothing
            out, err = proc.communicate("go\n", timeout=30)
            assert proc.returncode == 3 and "lost" in out.splitlines(), out + err
            assert registry.history() == []
            assert redis_client.exists(registry.keys.lock)  # the successor's lock is still there
        figures.add(SUITE, "actions committed by a holder whose lease was lost", len(registry.history()))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()

    # a live holder that keeps its lease commits and releases
    proc = _child(redis_url, registry, lease_s, "commit")
    time.sleep(3 * lease_s)
    out, err = proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0 and "committed" in out.splitlines(), out + err
    assert [e.kind for e in registry.history()] == ["child_action"]
    assert not redis_client.exists(registry.keys.lock)
