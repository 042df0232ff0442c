"""``nextstate up``: the whole local stack as supervised child processes.

Starts Redis, the policy server, the proxy, labeler workers, the learner and the canary controller in
order, each in its own process group with prefixed logs (also kept under ``<home>/logs``), waits for
each to be ready, restarts a crashed child with backoff, and stops everything on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
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
from pydantic import Field

from proxy.redis_connect import CLUSTER_UNREACHABLE, connect
from proxy.settings import CommonSettings

COMPONENTS = ("redis", "serve", "proxy", "worker", "learner", "controller")
STATE_FILE = "up.json"


class UpSettings(CommonSettings):
    """What ``nextstate up`` reads from the environment (``NEXTSTATE_`` prefix)."""

    host: str = Field(default="127.0.0.1", description="Interface the proxy and policy server bind.")
    proxy_port: int = Field(default=8080, description="Port of the proxy (the clients' base URL).")
    serve_port: int = Field(default=8001, description="Port of the embedded policy server.")
    upstream_url: str | None = Field(default=None, description="Existing OpenAI-compatible server; unset = embedded.")
    base_model: str = Field(default="builtin:tiny-chat", description="Model of the embedded policy server.")
    components: str = Field(default=",".join(COMPONENTS), description="Comma-separated children to start.")
    stop_grace_s: float = Field(default=10.0, description="SIGTERM to SIGKILL grace period on stop.")
    restart_backoff_s: float = Field(default=0.5, description="First restart delay; doubles per quick crash.")
    restart_backoff_max_s: float = Field(default=30.0, description="Longest restart delay.")
    stable_after_s: float = Field(default=30.0, description="A child up this long has its backoff reset.")
    ready_timeout_s: float = Field(default=900.0, description="Longest wait for a child to become ready.")
    scope_by: str = Field(default="header", description="Learning scopes on this machine: only an "
                          "X-NextState-Scope header names a personal scope of its own (see proxy.scopes).")
    scope_unkeyed: str = Field(default="local", description="Every other request learns in the personal scope "
                               "'local': one person on a laptop, with the personal canary.")


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
def _nextstate(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "nextstate", *args)


@dataclass(frozen=True)
class StackPlan:
    """Children to run and the addresses they will have."""

    specs: list[ChildSpec]
    base_url: str
    upstream_url: str
    redis_url: str
    home: Path


def plan_stack(settings: UpSettings, extras: list[tuple[str, str]] | None = None) -> StackPlan:
    """Which children to start, with which environment, given the settings."""
    from proxy.embedded_redis import EmbeddedRedis, _binary

    home = settings.home_dir().resolve()
    wanted = {c.strip() for c in settings.components.split(",") if c.strip()}
    unknown = wanted - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown components {sorted(unknown)}; choose from {', '.join(COMPONENTS)}")
    specs: list[ChildSpec] = []
    redis_url = settings.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(home / "redis")
        redis_url = embedded.url
        if "redis" in wanted and not redis_ready(redis_url)():  # reuse one another process already runs
            embedded.directory.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                embedded.socket.unlink()
            specs.append(ChildSpec("redis", (
                _binary(), "--port", "0", "--unixsocket", str(embedded.socket), "--unixsocketperm", "700",
                "--dir", str(embedded.directory), "--appendonly", "yes", "--save", "", "--daemonize", "no",
            ), ready=redis_ready(redis_url)))
    serve_url = f"http://{settings.host}:{settings.serve_port}"
    upstream_url = settings.upstream_url or f"{serve_url}/v1"
    base_url = f"http://{settings.host}:{settings.proxy_port}"
    env = {
        "NEXTSTATE_HOME": str(home),
        "NEXTSTATE_REDIS_URL": redis_url,
        "NEXTSTATE_UPSTREAM_URL": upstream_url,
        "NEXTSTATE_BASE_MODEL": settings.base_model,
        "NEXTSTATE_LOG_JSON": os.environ.get("NEXTSTATE_LOG_JSON", "false"),  # readable prefixed logs
        "NEXTSTATE_SCOPE_BY": settings.scope_by,
        "NEXTSTATE_SCOPE_UNKEYED": settings.scope_unkeyed,
    }
    if "learner" in wanted:  # needs only Redis: it loads its model while the policy server loads its own
        specs.append(ChildSpec("learner", _nextstate("learn"), env, critical=False))
    if "serve" in wanted and not settings.upstream_url:
        serve_env = {**env, "NEXTSTATE_SERVE_HOST": settings.host, "NEXTSTATE_SERVE_PORT": str(settings.serve_port)}
        specs.append(ChildSpec("serve", _nextstate("serve"), serve_env, ready=http_ready(f"{serve_url}/healthz"),
                               critical=True))
    if "proxy" in wanted:
        specs.append(ChildSpec("proxy", _nextstate("proxy", "--host", settings.host, "--port", str(settings.proxy_port)),
                               env, ready=http_ready(f"{base_url}/readyz"), critical=False))
    if "worker" in wanted:
        specs.append(ChildSpec("worker", _nextstate("worker"), env, critical=False))
    if "controller" in wanted:
        specs.append(ChildSpec("controller", _nextstate("controller"), env, critical=False))
    for name, command in extras or []:
        specs.append(ChildSpec(name, tuple(shlex.split(command)), env, critical=False))
    return StackPlan(specs, f"{base_url}/v1", upstream_url, redis_url, home)


def _write_state(plan: StackPlan, supervisor: Supervisor) -> None:
    """``<home>/up.json``: where the running stack is, for clients, scripts and the benchmark."""
    state = {"base_url": plan.base_url, "upstream_url": plan.upstream_url, "redis_url": plan.redis_url,
             "home": str(plan.home), "logs": str(supervisor.log_dir), "supervisor_pid": os.getpid(),
             "pids": supervisor.pids(), "restarts": supervisor.restarts()}
    tmp = plan.home / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(plan.home / STATE_FILE)


def banner(plan: StackPlan, supervisor: Supervisor) -> str:
    return "\n".join([
        "nextstate is up",
        f"  base URL for clients : {plan.base_url}   (OpenAI SDK: base_url=..., any api_key)",
        f"  policy server        : {plan.upstream_url}   (private: do not expose)",
        f"  redis                : {plan.redis_url}",
        f"  data                 : {plan.home}   (adapters, redis, spool, model cache)",
        f"  logs                 : {supervisor.log_dir}/<child>.log",
        f"  state                : {plan.home / STATE_FILE}",
        "  Ctrl-C stops everything.",
    ])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nextstate up", description="Start the whole local stack.")
    parser.add_argument("--components", help=f"comma-separated subset of {','.join(COMPONENTS)}")
    parser.add_argument("--port", type=int, help="proxy port (clients' base URL)")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=COMMAND",
                        help="also supervise this command (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="children's logs only to files, not the terminal")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    overrides: dict[str, object] = {}
    if args.components:
        overrides["components"] = args.components
    if args.port:
        overrides["proxy_port"] = args.port
    settings = UpSettings(**overrides)  # type: ignore[arg-type]
    extras = [item.partition("=")[::2] for item in args.extra]
    if any(not name or not command for name, command in extras):
        print("nextstate up: --extra takes NAME=COMMAND", file=sys.stderr)
        return 2
    plan = plan_stack(settings, extras)
    supervisor = Supervisor(
        plan.specs, plan.home / "logs", echo=not args.quiet, grace_s=settings.stop_grace_s,
        backoff_s=settings.restart_backoff_s, backoff_max_s=settings.restart_backoff_max_s,
        stable_after_s=settings.stable_after_s, on_change=lambda s: _write_state(plan, s),
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        supervisor.interrupt()  # also ends a start still waiting for readiness

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        supervisor.start(settings.ready_timeout_s)
        if not stop.is_set():
            print(banner(plan, supervisor), flush=True)
        while not stop.wait(0.5):
            pass
    except StartupError as exc:
        supervisor.say(f"start failed: {exc}")
        code = 1
    finally:
        supervisor.say("stopping")
        supervisor.stop()
        with contextlib.suppress(FileNotFoundError):
            (plan.home / STATE_FILE).unlink()
        supervisor.say("all stopped")
    return code
