"""A real Redis Cluster for tests: ``redis-server --cluster-enabled yes`` processes on loopback ports.

``RedisCluster(directory, masters=3).start()`` starts the nodes, gives each an equal share of the slots,
joins them (``CLUSTER MEET``; no replicas) and waits until every node reports ``cluster_state:ok``. With
``masters=1`` the one node holds every slot: a plain client works against it, and Redis still refuses any
script, transaction or command whose keys span slots (``CROSSSLOT``). Like ``RedisServer``, a missing
binary skips the test locally and fails it on CI.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis

from tests.support.redis_server import redis_binary


def _free_port() -> int:
    """A loopback port that is free, as is its cluster bus port (port + 10000)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """``masters`` cluster-enabled redis-server processes on 127.0.0.1, each in its own directory."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.masters = masters
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The cluster URL every nextstate process accepts (``NEXTSTATE_REDIS_URL``)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def node(self, index: int = 0, **kwargs: object) -> redis.Redis:
        """A plain client of one node (cluster commands, or everything when the cluster is one node)."""
        return redis.Redis(host="127.0.0.1", port=self.ports[index], **kwargs)  # type: ignore[arg-type]

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        home = self.directory / f"node-{index}"
        home.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [redis_binary(), "--port", str(self.ports[index]), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(home / "nodes.conf"), "--cluster-node-timeout", "2000",
             "--dir", str(home), "--save", "", "--appendonly", "yes", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._wait(lambda: bool(self._ask(index, "PING")), "start")
        return process

    def restart(self) -> RedisCluster:
        """Start the stopped nodes again on their ports; they rejoin from their config and append-only files."""
        self.processes = [self._spawn(index) for index in range(self.masters)]
        self._wait(self._ok, "form again")
        return self

    def start(self) -> RedisCluster:
        try:
            for index in range(self.masters):
                self.ports.append(_free_port())
                self.processes.append(self._spawn(index))
            # what `redis-cli --cluster create --cluster-replicas 0` does, without needing redis-cli: an equal
            # share of the slots to each master, then every node meets the first
            bounds = [16384 * index // self.masters for index in range(self.masters + 1)]
            for index in range(self.masters):
                self._ask(index, "CLUSTER", "ADDSLOTS", *range(bounds[index], bounds[index + 1]))
                if index:
                    self._ask(index, "CLUSTER", "MEET", "127.0.0.1", self.ports[0])
            self._wait(self._ok, "form")
        except BaseException:
            self.stop()
            raise
        return self

    def _ok(self) -> bool:
        for index in range(self.masters):
            info = self._ask(index, "CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
        return True

    def _ask(self, index: int, *command: object) -> object:
        with self.node(index, socket_timeout=2) as client:
            return client.execute_command(*command)

    @staticmethod
    def _wait(ready: object, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():  # type: ignore[operator]
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the Redis Cluster did not {what} within {timeout:.0f} s")

    def flush(self) -> None:
        for index in range(self.masters):
            self._ask(index, "FLUSHALL")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []
