"""A learner process that SIGKILLs itself at a point of publishing (``python -m tests.faults.learner_child
POINT LEARN_ARGS...``): ``staging`` once the adapter files are written into the staging directory but
before its manifest and rename; ``record`` after the rename, just before the version's record is sent to Redis."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import redis

from learner import learn
from registry.store import Registry


def die(*_: Any, **__: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(point: str, *argv: str) -> int:
    if point == "staging":
        Registry.publish = die  # type: ignore[method-assign]  # called with the adapter files written, nothing else
    elif point == "record":
        send = redis.UnixDomainSocketConnection.send_packed_command

        def send_or_die(self: redis.UnixDomainSocketConnection, command: Any, check_health: bool = True) -> None:
            parts = [command] if isinstance(command, (bytes, memoryview)) else command
            if any(b"candidate_created" in bytes(part) for part in parts):
                assert any(p.name.startswith("v") for p in Path(os.environ["NEXTSTATE_HOME"], "adapters").iterdir())
                die()
            send(self, command, check_health)

        redis.UnixDomainSocketConnection.send_packed_command = send_or_die  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown kill point {point!r}")
    return learn.main(list(argv))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
