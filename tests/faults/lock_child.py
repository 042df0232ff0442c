"""A process that holds the registry lock (``python -m tests.faults.lock_child REDIS_SOCKET ROOT LEASE_S MODE``).

It prints ``held`` once it has the lock. ``die``: it SIGKILLs itself at once, holding the lock. ``commit``: it
waits for a line on stdin, then commits an audit event under the lock and prints ``committed`` (exit 0), or
``lost`` (exit 3, nothing written) when its lease ran out meanwhile.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import redis

from registry.lease import LeaseLost
from registry.records import AuditEvent
from registry.store import Registry


def main(socket: str, root: str, lease_s: str, mode: str) -> int:
    registry = Registry(redis.Redis(unix_socket_path=socket), Path(root), base_model="tiny-chat")
    with registry.lock(lease_s=float(lease_s), wait=10):
        print("held", flush=True)
        if mode == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.stdin.readline()
        try:
            with registry.atomic():
                registry.log(AuditEvent(kind="child_action", actor="child"))
        except LeaseLost:
            print("lost", flush=True)
            return 3
    print("committed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
