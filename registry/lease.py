"""The registry lock: one token's short lease in Redis, renewed by a thread of the live holder.

A holder writes a random token under the lock key with a lease of ``lease_s`` (SET NX PX) and a daemon
thread renews it every third of the lease, only while the key still holds its token (redis-py's
``Lock.reacquire``, a compare-and-set script). A holder that dies — SIGKILL, power loss — stops renewing,
so the next process takes the lock within one lease instead of waiting out a long timeout; a live holder
keeps it for as long as its action runs. Before its writes commit, the holder renews once more
(``confirm``) and refuses to commit if the token is no longer its own: a holder that lost its lease
(paused longer than the lease, Redis unreachable past it) never writes over its successor's action.
"""

from __future__ import annotations

import threading
from types import TracebackType

import redis
import structlog
from redis.exceptions import LockError, LockNotOwnedError

from registry.errors import RegistryError

log = structlog.get_logger(__name__)

DEFAULT_LEASE_S = 5.0


class LeaseLost(RegistryError):
    """The lock's lease ran out and another process may hold it: this action must not commit."""


class Lease:
    """A context manager holding the lock ``key`` (raises ``redis.exceptions.LockError`` when it cannot be
    taken within ``wait_s``)."""

    def __init__(self, client: redis.Redis, key: str, lease_s: float = DEFAULT_LEASE_S, wait_s: float = 60.0) -> None:
        # thread_local=False: the renewing thread uses the token the acquiring thread stored
        self.lock = client.lock(key, timeout=lease_s, blocking_timeout=wait_s, sleep=min(0.1, lease_s / 10),
                                thread_local=False)
        self.key = key
        self.lease_s = lease_s
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> Lease:
        if not self.lock.acquire():
            raise LockError(f"could not take the registry lock {self.key} in time: another action holds it")
        self._renewer = threading.Thread(target=self._renew, name=f"lease:{self.key}", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            self.lock.release()
        except LockNotOwnedError:
            log.warning("registry_lock_lost_before_release", key=self.key)
        except (redis.RedisError, OSError) as error:  # the lease runs out on its own
            log.warning("registry_lock_release_failed", key=self.key, error=repr(error))

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.lock.reacquire()
            except LockNotOwnedError:
                self.lost = True
                log.error("registry_lock_lease_lost", key=self.key)
                return
            except (redis.RedisError, OSError) as error:  # try again; the commit confirms before it writes
                log.warning("registry_lock_renew_failed", key=self.key, error=repr(error))

    def confirm(self) -> None:
        """Renew the lease now (a full lease ahead for the commit that follows), or raise ``LeaseLost``."""
        try:
            self.lock.reacquire()
        except (LockNotOwnedError, LockError) as error:
            self.lost = True
            raise LeaseLost(f"the registry lock {self.key} was lost (its lease ran out); nothing was written") \
                from error
