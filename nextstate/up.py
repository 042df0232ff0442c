"""``nextstate up``: the whole local stack as supervised child processes.

Starts Redis, the policy server, the proxy, labeler workers, the learner and the canary controller in
order, each in its own process group with prefixed logs (also kept under ``<home>/logs``), waits for
each to be ready, restarts a crashed child with backoff, and stops everything on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from nextstate.supervisor import ChildSpec, StartupError, Supervisor, http_ready, redis_ready
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
