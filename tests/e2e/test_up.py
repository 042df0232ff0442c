"""``nextstate up`` as a real process: children start, a killed child is restarted, Ctrl-C stops all."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from nextstate.supervisor import ChildSpec, Supervisor, backoff_delay
from tests.support.processes import alive

ROOT = Path(__file__).resolve().parents[2]
# a child that keeps writing into Redis: proves it really runs against the stack's Redis
PINGER = (
    f"{sys.executable} -c \"import os, time, redis; c = redis.Redis.from_url(os.environ['NEXTSTATE_REDIS_URL']); "
    "print('pinger up', flush=True)\n"
    "while True: c.incr('pings'); time.sleep(0.1)\""
)


@pytest.mark.parametrize(
    ("crashes", "expected"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (40, 30.0)],
)
def test_backoff_delay_doubles_up_to_the_cap(crashes: int, expected: float) -> None:
    assert backoff_delay(crashes, base=0.5, cap=30.0) == expected


def test_a_child_waiting_to_restart_is_not_restarted_by_the_stop(tmp_path: Path) -> None:
    spec = ChildSpec("crasher", (sys.executable, "-c", "raise SystemExit(3)"), critical=False)
    supervisor = Supervisor([spec], tmp_path, echo=False, out=io.StringIO(), backoff_s=60.0)
    supervisor.start()
    _wait(lambda: any("exited with code 3" in e for e in supervisor.events), what="the crash")
    supervisor.stop()
    assert supervisor.events[-1] == "crasher was waiting to restart; not restarted"
    assert supervisor.restarts() == {"crasher": 0}
    assert "crasher was waiting to restart" in (tmp_path / "up.log").read_text()


# counts the SIGTERMs it gets and exits half a second after the first
TERM_COUNTER = (
    "import signal, sys, time\n"
    "first = []\n"
    "def on_term(*_):\n"
    "    print('TERM', flush=True)\n"
    "    first.append(first[0] if first else time.monotonic())\n"
    "signal.signal(signal.SIGTERM, on_term)\n"
    "print('up', flush=True)\n"
    "while not first or time.monotonic() < first[0] + 0.5:\n"
    "    time.sleep(0.02)\n"
)


def test_a_restarted_child_is_stopped_once_and_before_what_it_depends_on(tmp_path: Path) -> None:
    specs = [ChildSpec("db", (sys.executable, "-c", TERM_COUNTER)),
             ChildSpec("app", (sys.executable, "-c", TERM_COUNTER), critical=False)]
    supervisor = Supervisor(specs, tmp_path, echo=False, out=io.StringIO(), backoff_s=0.1, grace_s=5)
    supervisor.start()
    first = supervisor.pids()
    _wait(lambda: all(_read(tmp_path / f"{n}.log").count("up") == 1 for n in first), what="both up")
    for pid in first.values():
        os.kill(pid, signal.SIGKILL)
    # both come back, started this time by the watcher thread, not by the thread that called start()
    _wait(lambda: supervisor.restarts() == {"db": 1, "app": 1} and len(supervisor.pids()) == 2, what="restarts")
    _wait(lambda: all(_read(tmp_path / f"{n}.log").count("up") == 2 for n in first), what="both up again")
    supervisor.stop()
    stops = [e for e in supervisor.events if "stopped" in e]
    assert stops == ["app stopped (code 0)", "db stopped (code 0)"]
    for name in first:  # one SIGTERM each, from the stop: none from the watcher thread ending first
        assert (tmp_path / f"{name}.log").read_text().count("TERM") == 1


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _wait(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def up_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    home = tmp_path / "home"
    log = tmp_path / "up.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTSTATE_")}
    env.update(NEXTSTATE_HOME=str(home), NEXTSTATE_RESTART_BACKOFF_S="0.2", NEXTSTATE_STOP_GRACE_S="5")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "nextstate", "up", "--components", "redis", "--extra", f"pinger={PINGER}"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    yield process, home, log
    if process.poll() is None:
        process.kill()
        process.wait()


def test_up_starts_restarts_a_killed_child_and_stops_cleanly(
    up_process: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    process, home, log = up_process
    state_file = home / "up.json"

    def state() -> dict[str, object] | None:
        try:
            data = json.loads(state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if {"redis", "pinger"} <= set(data["pids"]) else None

    first = _wait(state, what="up.json with both children")
    assert isinstance(first, dict)
    client = redis.Redis.from_url(str(first["redis_url"]))
    _wait(lambda: int(client.get("pings") or 0) > 3, what="the child to write into the stack's Redis")
    _wait(lambda: "nextstate is up" in log.read_text(), what="the banner")
    output = log.read_text()
    assert f"base URL for clients : {first['base_url']}" in output
    assert "pinger | pinger up" in output  # prefixed child log
    assert (home / "logs" / "pinger.log").read_text().startswith("pinger up")

    pids = dict(first["pids"])  # type: ignore[call-overload]
    os.kill(pids["pinger"], signal.SIGKILL)
    restarted = _wait(lambda: (s := state()) and s["pids"]["pinger"] != pids["pinger"] and s, what="a restart")
    assert isinstance(restarted, dict)
    assert restarted["restarts"]["pinger"] == 1
    assert f"pinger exited with code -{int(signal.SIGKILL)}" in log.read_text()
    before = int(client.get("pings") or 0)
    _wait(lambda: int(client.get("pings") or 0) > before + 3, what="the restarted child to work again")

    os.kill(pids["redis"], signal.SIGKILL)  # the embedded Redis too
    again = _wait(lambda: (s := state()) and s["pids"].get("redis", pids["redis"]) != pids["redis"] and s,
                  what="redis restarted")
    assert isinstance(again, dict)
    _wait(lambda: _ping(str(first["redis_url"])), what="the restarted redis to answer")
    # the pinger may have crashed while Redis was down: the stack recovers, it writes again
    after = int(client.get("pings") or 0)
    _wait(lambda: int(client.get("pings") or 0) > after + 3, what="the child to write into the restarted Redis")
    again = _wait(lambda: (s := state()) and s, what="both children running")
    assert isinstance(again, dict)

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) == 0
    for pid in [*pids.values(), *again["pids"].values()]:
        assert not alive(pid), f"child {pid} survived the stop"
    assert not state_file.exists()
    text = log.read_text()
    assert "all stopped" in text and "killed after" not in text  # stopped by SIGTERM, within the grace
    # what uses Redis stops first, so it can finish its work against a live Redis
    assert "pinger stopped" in text and "redis stopped" in text, text
    assert text.index("pinger stopped") < text.index("redis stopped")


def _ping(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=1) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_up_runs_the_real_stack_and_restarts_a_killed_proxy(tmp_path: Path, tiny_model_path: Path) -> None:
    """Every real child (policy server, proxy, labeler, learner, controller): chat through the proxy
    with the openai SDK, kill the proxy, chat again after its restart, stop everything with SIGINT."""
    import openai

    from tests.support.servers import free_port

    home, log = tmp_path / "home", tmp_path / "up.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTSTATE_")}
    env.update(NEXTSTATE_HOME=str(home), NEXTSTATE_BASE_MODEL=str(tiny_model_path),
               NEXTSTATE_SERVED_MODEL_NAME="tiny-chat", NEXTSTATE_SERVED_BASE_MODEL="tiny-chat",
               NEXTSTATE_PROXY_PORT=str(free_port()), NEXTSTATE_SERVE_PORT=str(free_port()),
               NEXTSTATE_WORKERS="1", NEXTSTATE_LEARNER_METRICS_PORT="0", NEXTSTATE_RESTART_BACKOFF_S="0.2")
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "nextstate", "up"], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: "nextstate is up" in log.read_text() or process.poll() is not None, timeout=400, what="the stack")
        assert process.poll() is None, log.read_text()[-3000:]
        state = json.loads((home / "up.json").read_text())
        assert set(state["pids"]) == {"redis", "serve", "proxy", "worker", "learner", "controller"}
        client = openai.OpenAI(base_url=state["base_url"], api_key="any", timeout=60, max_retries=0)

        def ask() -> str:
            reply = client.chat.completions.create(
                model="tiny-chat", messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                max_tokens=16, temperature=0.0,
            )
            return reply.choices[0].message.content or ""

        assert ask()
        os.kill(state["pids"]["proxy"], signal.SIGKILL)
        _wait(lambda: json.loads((home / "up.json").read_text())["restarts"]["proxy"] == 1, what="proxy restart")

        def answers() -> bool:
            try:
                return bool(ask())
            except openai.APIConnectionError:
                return False

        _wait(answers, timeout=60, what="the restarted proxy to serve")
        pids = json.loads((home / "up.json").read_text())["pids"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert not any(alive(pid) for pid in pids.values())
        assert "proxy exited with code -9" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
