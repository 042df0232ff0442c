"""A private nextstate stack per benchmark run (``nextstate up`` as a subprocess) and what it is doing.

Each run gets a fresh home (its own Redis, registry and adapters) whose model cache is shared, so the
built-in model is built once. ``Pipeline`` reads the stack's Redis to pace the simulated user (wait
until what is in flight has been labeled, trained and gated) and to report progress.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from labeler.records import SAMPLES_STREAM
from proxy.records import TRANSITIONS_STREAM, TURNS_STREAM
from registry.lineage import pending_tip
from registry.records import (
    GLOBAL_SCOPE,
    LearnerState,
    VersionInfo,
    learner_state_key,
    scope_keys,
    stream_id,
)

ROOT = Path(__file__).resolve().parents[2]


class StackError(RuntimeError):
    """The stack did not start (its output is in the message)."""


_LIVE: set[subprocess.Popen[bytes]] = set()
"""The ``nextstate up`` processes this benchmark started and has not stopped yet."""
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


def stop_stacks_on_termination() -> None:
    """Make SIGTERM and SIGHUP stop every live stack (and so its workers and servers) before exiting.

    Python's default for these signals ends the process at once, skipping the ``finally`` that stops
    a run's stack, so its ``nextstate up`` and all it started would keep running (and keep the cores
    busy). Once the signal has come, no new stack starts. Call from the main thread of a benchmark's
    entry point.
    """

    def handler(signum: int, _frame: object) -> None:
        _STOPPING.set()
        while True:
            with _LIVE_LOCK:
                live = list(_LIVE)
            if not live:
                break
            for process in live:
                stop_process(process, timeout_s=30.0)
        os._exit(128 + signum)  # the run threads may be blocked on a stack that is gone now

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def launch(argv: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start a stack's process and count it as live until ``stop_process`` stops it (refused once stopping)."""
    with _LIVE_LOCK:
        if _STOPPING.is_set():
            raise StackError("the benchmark is stopping")
        process: subprocess.Popen[bytes] = subprocess.Popen(argv, **popen)
        _LIVE.add(process)
    return process


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGINT (``nextstate up`` then stops what it started), SIGKILL after ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with _LIVE_LOCK:
        _LIVE.discard(process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """``nextstate up --quiet`` under ``home`` with extra environment; ``start`` waits for the banner."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)
    components: str | None = None
    model_cache: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    base_url: str = ""
    redis_url: str = ""

    @property
    def output(self) -> Path:
        return self.home / "up.out"

    def start(self, timeout_s: float = 900.0) -> Stack:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.model_cache is not None and not (self.home / "models").exists():
            self.model_cache.mkdir(parents=True, exist_ok=True)
            (self.home / "models").symlink_to(self.model_cache.resolve(), target_is_directory=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTSTATE_")}
        env.update(NEXTSTATE_HOME=str(self.home), NEXTSTATE_PROXY_PORT=str(free_port()),
                   NEXTSTATE_SERVE_PORT=str(free_port()), **self.env)
        argv = [sys.executable, "-m", "nextstate", "up", "--quiet"]
        if self.components:
            argv += ["--components", self.components]
        with self.output.open("wb") as out:
            self.process = launch(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while "nextstate is up" not in self.output.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.output.read_text(errors="replace").splitlines()[-30:])
                raise StackError(f"nextstate up did not come up under {self.home}:\n{tail}")
            time.sleep(0.2)
        state = json.loads((self.home / "up.json").read_text())
        self.base_url, self.redis_url = state["base_url"], state["redis_url"]
        return self

    def restarts(self) -> dict[str, int]:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return {k: int(v) for k, v in json.loads((self.home / "up.json").read_text())["restarts"].items()}
        return {}

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s)


@dataclass
class Progress:
    """What the loop has done so far (for the live line and the results)."""

    turns: int = 0
    transitions: int = 0
    with_next_state: int = 0
    """Transitions that carry the user's next message (not closed empty)."""
    samples: int = 0
    prefer: int = 0
    avoid: int = 0
    hints: int = 0
    events: Counter[str] = field(default_factory=Counter)
    states: dict[str, str] = field(default_factory=dict)
    stable: str | None = None
    ready: list[str] = field(default_factory=list)
    decisions: list[dict[str, object]] = field(default_factory=list)
    """The scope's audit trail, oldest first: kind, version, reason and the canary's evidence."""

    @property
    def reward_rate(self) -> float | None:
        judged = self.prefer + self.avoid
        return self.prefer / judged if judged else None

    def line(self, interactions: int) -> str:
        rate = f"{self.reward_rate:.2f}" if self.reward_rate is not None else "-"
        gate_pass = self.events["gate_passed"]
        gate_fail = self.events["gate_failed"]
        return (f"interactions {interactions:3d} | reward rate {rate} | samples {self.samples} "
                f"(prefer {self.prefer}, avoid {self.avoid}, hints {self.hints}) | versions {self.events['candidate_created']} "
                f"| gate pass {gate_pass} fail {gate_fail} | canary promoted {self.events['promoted']} "
                f"rolled back {self.events['rolled_back']} rejected {self.events['rejected']} | stable {self.stable or 'base'}")


class Pipeline:
    """Reads the stack's streams and one learning scope's registry state; ``settle`` waits for in-flight work."""

    def __init__(self, client: redis.Redis, scope: str = GLOBAL_SCOPE) -> None:
        self.redis = client
        self.keys = scope_keys(scope)
        self.progress = Progress()
        self._samples_from = "-"
        self._events_from = "-"
        self._transitions_from = "-"

    def refresh(self) -> Progress:
        p = self.progress
        p.turns = int(self.redis.xlen(TURNS_STREAM))
        p.transitions = int(self.redis.xlen(TRANSITIONS_STREAM))
        p.samples = int(self.redis.xlen(SAMPLES_STREAM))
        for _, fields in self._read(SAMPLES_STREAM, "_samples_from"):
            sample = json.loads(fields[b"record"])
            p.prefer += sample.get("cls") == "prefer"
            p.avoid += sample.get("cls") == "avoid"
            p.hints += bool(sample.get("hint"))
        for _, fields in self._read(TRANSITIONS_STREAM, "_transitions_from"):
            p.with_next_state += bool(json.loads(fields[b"record"]).get("next_state"))
        for _, fields in self._read(self.keys.events, "_events_from"):
            event = json.loads(fields[b"event"])
            kind = event.get("kind", "")
            if kind == "gate_verdict":
                passed = (event.get("evidence") or {}).get("to") == "gated_pass"
                kind = "gate_passed" if passed else "gate_failed"
            p.events[kind] += 1
            p.decisions.append({"kind": kind, "version": event.get("version"), "reason": event.get("reason", ""),
                                "evidence": event.get("evidence") or {}})
        infos = {k.decode(): json.loads(v) for k, v in self.redis.hgetall(self.keys.versions).items()}
        p.states = {version: info.get("state", "") for version, info in infos.items()}
        stable = self.redis.hget(self.keys.aliases, "stable")
        p.stable = stable.decode() if stable else None
        # what the controller would canary next: the newest gated version extending the current stable
        tip = pending_tip([VersionInfo.model_validate(info) for info in infos.values()], p.stable)
        p.ready = [tip] if tip else []
        return p

    def _read(self, stream: str, cursor_attr: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        start = getattr(self, cursor_attr)
        entries = self.redis.xrange(stream, min=start if start == "-" else f"({start}", count=1000)
        if entries:
            last = entries[-1][0]
            setattr(self, cursor_attr, _text(last))
        return entries

    def busy(self) -> str | None:
        """Why the loop is not idle yet (None = idle): unlabeled transitions, training or gating pending."""
        p = self.refresh()
        if p.samples < p.transitions:
            return "labeling"
        if self._learning():
            return "training"
        if "candidate" in p.states.values():
            return "gating"
        if p.ready and not self.redis.exists(self.keys.canary):
            return "starting a canary"  # the controller starts one on its next tick
        return None

    def _learning(self) -> bool:
        """Samples the learner has not read yet, or a learner still reading or training them (it says
        which in its LearnerState; a batch a refused round left pending holds nobody back)."""
        newest = self.redis.xrevrange(SAMPLES_STREAM, count=1)
        for group in self._groups(SAMPLES_STREAM):
            delivered = _text(group.get("last-delivered-id") or "0-0")
            if newest and stream_id(delivered) < stream_id(_text(newest[0][0])):
                return True  # the learner takes them on its next poll
            for consumer in self._consumers(SAMPLES_STREAM, _text(group["name"])):
                raw = self.redis.get(learner_state_key(_text(consumer.get("name") or "")))
                said = LearnerState.model_validate_json(raw) if raw else None
                if said is not None and (said.state == "training" or said.behind(delivered)):
                    return True
        return False

    def _groups(self, stream: str) -> list[dict[str, object]]:
        try:
            raw = self.redis.xinfo_groups(stream)
        except redis.ResponseError:  # no such stream yet
            return []
        return [{_text(k): _text(v) if isinstance(v, bytes) else v for k, v in g.items()} for g in raw]

    def _consumers(self, stream: str, group: str) -> list[dict[str, object]]:
        try:
            raw = self.redis.xinfo_consumers(stream, group)
        except redis.ResponseError:
            return []
        return [{_text(k): v for k, v in c.items()} for c in raw]

    def learner_ready(self, timeout_s: float) -> bool:
        """Wait until a learner reads the samples stream (a consumer of its group has polled once)."""
        deadline = time.monotonic() + timeout_s
        while not any(int(str(g.get("consumers", 0))) > 0 for g in self._groups(SAMPLES_STREAM)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def settle(self, timeout_s: float) -> str | None:
        """Wait until idle; returns what was still busy at the timeout (None = settled)."""
        deadline = time.monotonic() + timeout_s
        while (reason := self.busy()) is not None:
            if time.monotonic() > deadline:
                return reason
            time.sleep(0.1)
        return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
