"""Supervised child processes: each in its own process group with prefixed logs (also kept in a file),
started in order and waited for until ready, restarted with backoff when it crashes, stopped with
SIGTERM then SIGKILL after a grace period; a child dies with its parent (Linux)."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import redis

from proxy.redis_connect import CLUSTER_UNREACHABLE, connect


@dataclass(frozen=True)
class ChildSpec:
    """How to run one supervised child."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    """Variables added to the supervisor's environment."""
    ready: Callable[[], bool] | None = None
    """Probe that returns True once the child serves; None = ready once started."""
    critical: bool = True
    """Stopped last (after everything that depends on it), e.g. Redis."""


def backoff_delay(quick_crashes: int, base: float, cap: float) -> float:
    """Delay before a restart: ``base`` after the first quick crash, doubling, at most ``cap``."""
    if quick_crashes <= 0:
        return 0.0
    return float(min(cap, base * 2 ** (quick_crashes - 1)))


def http_ready(url: str) -> Callable[[], bool]:
    """Probe: GET ``url`` answers 200 (stdlib client: cheap enough to poll while a model loads)."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                return int(response.status) == 200
        except (OSError, ValueError):  # URLError, HTTPError, timeouts and resets are all OSErrors
            return False

    return probe


def redis_ready(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with connect(url, socket_timeout=1, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError, *CLUSTER_UNREACHABLE):
            return False

    return probe


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the supervisor dies (Linux only).

    The kernel sends it when the *thread* that started the child ends, so the thread that restarts
    children (``Supervisor._watch``) lives until every child is stopped.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Child:
    spec: ChildSpec
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    quick_crashes: int = 0
    restart_at: float | None = None
    pump: threading.Thread | None = None


class StartupError(RuntimeError):
    """A child did not become ready in time."""


class Supervisor:
    """Runs children, pumps their logs, restarts crashes, stops them all in reverse order."""

    def __init__(self, specs: list[ChildSpec], log_dir: Path, *, echo: bool = True, out: TextIO | None = None,
                 grace_s: float = 10.0, backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 stable_after_s: float = 30.0, on_change: Callable[[Supervisor], None] | None = None) -> None:
        self.children = [_Child(spec, log_dir / f"{spec.name}.log") for spec in specs]
        self.log_dir = log_dir
        self.echo = echo
        self.out = out or sys.stdout
        self.grace_s, self.backoff_s, self.backoff_max_s = grace_s, backoff_s, backoff_max_s
        self.stable_after_s = stable_after_s
        self.on_change = on_change
        self.events: list[str] = []  # what happened (starts, crashes, restarts), for reports and tests
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._stopping = threading.Event()  # no more starts or restarts
        self._stopped = threading.Event()  # every child stopped: the watcher may end
        self._monitor: threading.Thread | None = None
        self._width = max([len(s.name) for s in specs] + [2])

    # -- output -----------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        """A line from the supervisor itself (always shown, also in ``<log_dir>/up.log``)."""
        self.events.append(message)
        self._emit("up", message, self.log_dir / "up.log", force=True)

    def _emit(self, name: str, line: str, log_path: Path, force: bool = False) -> None:
        with self._write_lock:
            with log_path.open("a", encoding="utf-8") as log:
                log.write(line + "\n")
            if self.echo or force:
                self.out.write(f"{name:<{self._width}} | {line}\n")
                self.out.flush()

    def _pump(self, child: _Child, stream: TextIO) -> None:
        with stream:  # closes the pipe once the child's output ends
            for raw in stream:
                self._emit(child.spec.name, raw.rstrip("\n"), child.log_path)

    # -- lifecycle --------------------------------------------------------------------------------
    def _launch(self, child: _Child) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **child.spec.env}
        process = subprocess.Popen(
            list(child.spec.argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
        )
        child.process, child.started_at, child.restart_at = process, time.monotonic(), None
        assert process.stdout is not None
        text = io.TextIOWrapper(process.stdout, encoding="utf-8", errors="replace")
        child.pump = threading.Thread(target=self._pump, args=(child, text), daemon=True, name=f"log-{child.spec.name}")
        child.pump.start()
        verb = "restarted" if child.restarts else "started"
        self.say(f"{child.spec.name} {verb} (pid {process.pid}): {shlex.join(child.spec.argv)}")
        if self.on_change:
            self.on_change(self)

    def start(self, ready_timeout_s: float = 900.0) -> None:
        """Start the children in order, each once the previous one is ready; then keep watching."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._monitor = threading.Thread(target=self._watch, daemon=True, name="supervisor")
        self._monitor.start()
        for child in self.children:
            if self._stopping.is_set():
                return
            with self._lock:
                self._launch(child)
            if child.spec.ready is not None:
                self._wait_ready(child, ready_timeout_s)

    def _wait_ready(self, child: _Child, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._stopping.is_set():
            if child.process is not None and child.process.poll() is None and child.spec.ready and child.spec.ready():
                self.say(f"{child.spec.name} ready after {time.monotonic() - child.started_at:.1f} s")
                return
            if time.monotonic() > deadline:
                raise StartupError(f"{child.spec.name} not ready after {timeout_s:.0f} s; see {child.log_path}")
            time.sleep(0.5)

    def _watch(self) -> None:
        while not self._stopped.wait(0.2):
            with self._lock:
                if self._stopping.is_set():
                    continue
                for child in self.children:
                    self._check(child)

    def _check(self, child: _Child) -> None:
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at and not self._stopping.is_set():
                child.restarts += 1
                self._launch(child)
            return
        if child.process is None or child.process.poll() is None:
            return
        code = child.process.returncode
        uptime = now - child.started_at
        child.quick_crashes = 1 if uptime >= self.stable_after_s else child.quick_crashes + 1
        delay = backoff_delay(child.quick_crashes, self.backoff_s, self.backoff_max_s)
        child.restart_at = now + delay
        self.say(f"{child.spec.name} exited with code {code} after {uptime:.1f} s; restarting in {delay:.1f} s")

    def interrupt(self) -> None:
        """Stop restarting and stop waiting (safe from a signal handler); ``stop`` does the rest."""
        self._stopping.set()

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {c.spec.name: c.process.pid for c in self.children if c.process and c.process.poll() is None}

    def restarts(self) -> dict[str, int]:
        return {c.spec.name: c.restarts for c in self.children}

    def stop(self) -> None:
        """SIGTERM every child's process group (dependants first, critical ones last), then SIGKILL."""
        self._stopping.set()
        with self._lock:  # once held, the watcher starts nothing more
            ordered = list(reversed(self.children))
            for tier in ([c for c in ordered if not c.spec.critical], [c for c in ordered if c.spec.critical]):
                self._stop_tier(tier)
            for child in self.children:  # their last lines reach the logs before the stop returns
                if child.pump is not None:
                    child.pump.join(timeout=2)
        self._stopped.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)

    def _stop_tier(self, tier: list[_Child]) -> None:
        running = [c for c in tier if c.process is not None and c.process.poll() is None]
        for child in tier:
            if child not in running and child.restart_at is not None:
                self.say(f"{child.spec.name} was waiting to restart; not restarted")
        for child in running:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                self.say(f"{child.spec.name} stopped (code {child.process.returncode})")
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.process.wait()
                self.say(f"{child.spec.name} killed after {self.grace_s:.0f} s grace")
            _signal_group(child, signal.SIGKILL)  # stragglers left in its group


def _signal_group(child: _Child, sig: signal.Signals) -> None:
    if child.process is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, sig)


# -- the nextstate stack -----------------------------------------------------------------------------
