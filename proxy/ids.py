"""Record ids: unique across processes and restarts, without a random syscall per request.

Each process draws a random 64-bit prefix once (again after a fork) and counts up from there; an id
is 32 hex characters like a uuid4's hex.
"""

from __future__ import annotations

import itertools
import os

_state: tuple[int, str, itertools.count[int]] | None = None


def new_id() -> str:
    global _state
    pid = os.getpid()
    if _state is None or _state[0] != pid:
        _state = (pid, os.urandom(8).hex(), itertools.count(int.from_bytes(os.urandom(4), "big")))
    _, prefix, counter = _state
    return f"{prefix}{next(counter) & 0xFFFFFFFFFFFFFFFF:016x}"
