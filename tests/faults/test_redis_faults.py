"""Redis stopped and restarted under steady load, several times — and once more with a torn write at the
end of its append-only file, repaired with ``redis-check-aof --fix`` as docs/operations.md describes:
no client request fails, every turn and transition is stored exactly once, and a consumer group
resumes where it was."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
import redis

from proxy.records import TRANSITIONS_STREAM, TURNS_STREAM
from tests.faults.conftest import SUITE
from tests.support import figures
from tests.support.redis_server import RedisServer

GROUP = "faults"
SESSIONS = 3
RESTARTS = 3


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "durable-redis", appendonly=True).start()
    yield server
    server.stop()


class Load:
    """Sessions sending requests one after another, each in its own thread, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.turns: list[str] = []
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self._session, args=(f"s{i}",), daemon=True) for i in range(SESSIONS)]

    def _session(self, session: str) -> None:
        history: list[dict[str, str]] = []
        with openai.OpenAI(base_url=f"{self.url}/v1", api_key="k", max_retries=0, timeout=10) as sdk:
            step = 0
            while not self.stop.is_set():
                history = [*history[-6:], {"role": "user", "content": f"{session} message {step}"}]
                try:
                    raw = sdk.chat.completions.with_raw_response.create(
                        model="m", messages=history, stream=step % 2 == 0,  # type: ignore[arg-type]
                        extra_headers={"X-Session-Id": session})
                    parsed = raw.parse()
                    content = ("".join(c.choices[0].delta.content or "" for c in parsed if c.choices)  # type: ignore[union-attr]
                               if step % 2 == 0 else parsed.choices[0].message.content)  # type: ignore[union-attr]
                    self.turns.append(raw.headers["x-nextstate-turn-id"])
                    history.append({"role": "assistant", "content": content or ""})
                except Exception as exc:  # counted: the figure this test is about
                    self.failed.append(f"{session}: {exc!r}")
                step += 1
                time.sleep(0.01)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=20)


def consume(client: redis.Redis, delivered: Counter[str]) -> None:
    """Read the transitions stream through its consumer group and acknowledge (tolerates an absent Redis)."""
    try:
        while reply := client.xreadgroup(GROUP, "c1", {TRANSITIONS_STREAM: ">"}, count=500):
            ids = []
            for entry_id, fields in reply[0][1]:
                delivered[json.loads(fields[b"record"])["transition_id"]] += 1
                ids.append(entry_id)
            client.xack(TRANSITIONS_STREAM, GROUP, *ids)
    except (redis.RedisError, OSError):
        pass


def tear_aof_tail(server: RedisServer) -> None:
    """What a crash mid-write leaves: half a command at the end of the newest AOF file; then the repair."""
    aof_dir = server.directory / "appendonlydir"
    newest = max(aof_dir.glob("*.incr.aof"), key=lambda p: p.stat().st_mtime)
    with newest.open("ab") as handle:
        handle.write(b"*3\r\n$4\r\nXADD\r\n$15\r\nnextstate:turns\r\n$12\r\npartial-wri")
    manifest = next(aof_dir.glob("*.manifest"))
    check = subprocess.run(["redis-check-aof", "--fix", str(manifest)], input=b"y\n", capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert b"Successfully truncated AOF" in check.stdout, check.stdout  # the torn command was found and cut


@pytest.mark.slow
@pytest.mark.parametrize("torn_tail", [False, True], ids=["restarts", "restarts-torn-aof"])
def test_redis_restarts_under_load_lose_and_duplicate_nothing(
        torn_tail: bool, start_proxy: Callable[..., str], durable_redis: RedisServer) -> None:
    url = start_proxy(redis=durable_redis.url, replay_interval_s=0.1, redis_timeout_s=0.5,
                      session_idle_timeout_s=3600)
    check = durable_redis.client(socket_timeout=2)
    check.xgroup_create(TRANSITIONS_STREAM, GROUP, id="0", mkstream=True)
    delivered: Counter[str] = Counter()
    with Load(url) as load:
        for _ in range(RESTARTS):
            time.sleep(0.8)
            consume(check, delivered)
            durable_redis.stop()
            figures.add(SUITE, "faults injected: redis stopped and restarted")
            time.sleep(0.8)  # requests go on; records go to the spool
            if torn_tail:
                tear_aof_tail(durable_redis)
                figures.add(SUITE, "faults injected: torn AOF tail repaired")
            durable_redis.start()
        time.sleep(0.5)
    sent = Counter(load.turns)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stored = Counter(json.loads(f[b"record"])["turn_id"] for _, f in check.xrange(TURNS_STREAM))
        if set(stored) >= set(sent):
            break
        time.sleep(0.1)
    time.sleep(0.3)
    stored = Counter(json.loads(f[b"record"])["turn_id"] for _, f in check.xrange(TURNS_STREAM))
    transitions = Counter(json.loads(f[b"record"])["transition_id"] for _, f in check.xrange(TRANSITIONS_STREAM))
    consume(check, delivered)
    lost = len(set(sent) - set(stored))
    duplicated = sum(n - 1 for n in stored.values()) + sum(n - 1 for n in transitions.values()) \
        + sum(n - 1 for n in delivered.values())
    figures.add(SUITE, "client requests failed", len(load.failed))
    figures.add(SUITE, "records lost", lost + len(set(transitions) - set(delivered)))
    figures.add(SUITE, "records duplicated", duplicated)
    figures.add(SUITE, "client requests served during redis faults", len(sent))
    assert not load.failed, load.failed[:3]
    assert len(sent) >= 20 and lost == 0 and duplicated == 0
    # every turn but each session's newest has its next state; the group delivered each of them once
    assert len(transitions) == len(sent) - SESSIONS
    assert set(delivered) == set(transitions)
    check.close()
