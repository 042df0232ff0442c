"""A controller process that promotes the running canary and SIGKILLs itself just before its Nth write
command reaches Redis (``python -m tests.faults.promote_child REDIS_SOCKET ROOT KILL_AT REPLICA_URL...``)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import redis

from registry.actions import Control
from registry.publisher import Publisher
from registry.store import Registry

WRITES = (b"SET", b"DEL", b"HSET", b"HDEL", b"RPUSH", b"XADD", b"EXEC", b"EVAL", b"EVALSHA", b"INCR", b"EXPIRE")


def carries_write(command: Any) -> bool:
    packet = b"".join(bytes(part) for part in ([command] if isinstance(command, (bytes, memoryview)) else command))
    return any(b"\r\n" + name + b"\r\n" in packet for name in WRITES)


class KillBeforeWrite(redis.UnixDomainSocketConnection):
    """A connection that counts the packets carrying a write and kills its process before the Nth is sent."""

    kill_at = 0
    writes = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if carries_write(command):
            KillBeforeWrite.writes += 1
            if KillBeforeWrite.writes == KillBeforeWrite.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        super().send_packed_command(command, check_health)


def main(socket: str, root: str, kill_at: str, *urls: str) -> int:
    KillBeforeWrite.kill_at = int(kill_at)
    client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=KillBeforeWrite, path=socket))
    publisher = Publisher(urls=list(urls), drain_seconds=0.0)
    control = Control(Registry(client, Path(root), base_model="tiny-chat"), publisher)
    control.promote(None, "controller", "canary not worse than stable", {"canary": {"prefer": 60, "avoid": 0}})
    publisher.close()
    print(f"promoted after {KillBeforeWrite.writes} writes")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
