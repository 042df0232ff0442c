"""The canary controller: starts canaries for gated versions and applies the canary decision.

Each ``tick`` reads the labeled samples (and the canary's turns, for latency) written since the canary
started, counts prefer/avoid per arm — a sample counts for the version that served its turn, so
header opt-in and pinned turns are evidence too; a relabel of a turn replaces its earlier label — asks
``registry.canary.decide`` what to do and does it through ``registry.actions``, logging every decision
with its statistics. Run it as ``nextstate controller`` or call ``tick()`` from another process's loop.

The global scope's controller also ticks one controller per personal learning scope: those count only
their own scope's labeled turns (and the user's labeled stable turns from before the canary) and decide
with ``registry.personal_canary``. An undecided personal canary is replaced at once by the newest gated
version trained on top of it, which inherits its labeled turns (``Control.supersede``, one transaction).
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import redis
import structlog
from pydantic import ValidationError

from labeler.records import SAMPLES_STREAM, SampleRecord
from proxy.logs import configure_logging
from proxy.records import TURNS_STREAM, TurnRecord, outcome_field
from proxy.redis_connect import CLUSTER_UNREACHABLE
from registry import retention, sweep
from registry.actions import Control
from registry.canary import ArmCounts, CanaryPolicy, Decision, Health, decide, p99
from registry.errors import CanaryRunning, PolicyServerError, RegistryError
from registry.lineage import pending_chain, pending_tip
from registry.personal_canary import Evidence, PersonalPolicy
from registry.personal_canary import decide as decide_personal
from registry.records import GLOBAL_SCOPE, UPSTREAM_OUTCOMES_KEY, AuditEvent, CanaryState
from registry.settings import RegistrySettings
from registry.wiring import canary_policy, open_control, personal_policy

log = structlog.get_logger(__name__)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class Controller:
    def __init__(self, control: Control, policy: CanaryPolicy, clock: Callable[[], float] = time.time,
                 personal: PersonalPolicy | None = None) -> None:
        self.control = control
        self.registry = control.registry
        self.policy = policy
        self.personal = personal or PersonalPolicy()
        self.clock = clock
        self._scoped: dict[str, Controller] = {}  # the global controller's controllers of personal scopes
        self._stable_before: list[int] = []  # a personal canary: the user's labeled stable turns before it
        self._canary: str | None = None
        self._sample_cursor = self._turn_cursor = "-"  # "(<id>" after the first read: exclusive
        self._labels: dict[str, tuple[int, str | None, str]] = {}  # turn_id -> (revision, version, cls)
        self._latencies: list[float] = []

    # -- evidence -------------------------------------------------------------------------------
    def _reset(self, state: CanaryState) -> None:
        self._canary = state.version
        start = f"{int(state.started_at * 1000)}-0"  # inclusive: entries from the canary's start on
        self._sample_cursor = self._turn_cursor = start
        self._labels.clear()
        self._latencies.clear()

    def _read(self, stream: str, cursor: str) -> tuple[list[bytes], str]:
        """Records after ``cursor`` (a range bound for XRANGE) and the bound to continue from."""
        records: list[bytes] = []
        while True:
            entries = self.registry.redis.xrange(stream, min=cursor, count=1000)
            if not entries:
                return records, cursor
            for entry_id, fields in entries:
                records.append(fields.get(b"record") or fields["record"])
                cursor = f"({_text(entry_id)}"

    def _collect(self, state: CanaryState) -> tuple[ArmCounts, ArmCounts, Health]:
        if self._canary != state.version:
            self._reset(state)
        raw, self._sample_cursor = self._read(SAMPLES_STREAM, self._sample_cursor)
        for item in raw:
            try:
                sample = SampleRecord.model_validate_json(item)
            except ValidationError:
                log.warning("unreadable_sample_skipped")
                continue
            if sample.version_scope != GLOBAL_SCOPE:  # a personal lineage's version, not this one's
                continue
            known = self._labels.get(sample.turn_id)
            if known is None or sample.revision >= known[0]:
                self._labels[sample.turn_id] = (sample.revision, sample.serving_version, sample.cls)
        raw, self._turn_cursor = self._read(TURNS_STREAM, self._turn_cursor)
        for item in raw:
            try:
                turn = TurnRecord.model_validate_json(item)
            except ValidationError:
                continue
            if turn.serving.version == state.version and turn.serving.version_scope == self.registry.scope:
                self._latencies.append(turn.timings.total_ms)
        counts: dict[str | None, list[int]] = {state.version: [0, 0], state.stable_at_start: [0, 0]}
        for _, version, cls in self._labels.values():
            if version in counts and cls in ("prefer", "avoid"):
                counts[version][0 if cls == "prefer" else 1] += 1
        health = self._health(state)
        return ArmCounts(*counts[state.version]), ArmCounts(*counts[state.stable_at_start]), health

    def _health(self, state: CanaryState) -> Health:
        field = outcome_field(self.registry.scope, state.version)
        outcomes = self.registry.redis.hmget(UPSTREAM_OUTCOMES_KEY, f"{field}:ok", f"{field}:error")
        ok, errors = (int(v) if v else 0 for v in outcomes)
        return Health(requests=ok + errors, errors=errors, p99_ms=p99(self._latencies), turns=len(self._latencies))

    # -- a personal scope's evidence --------------------------------------------------------------
    def _scope_sample(self, item: bytes) -> SampleRecord | None:
        try:
            sample = SampleRecord.model_validate_json(item)
        except ValidationError:
            log.warning("unreadable_sample_skipped")
            return None
        return sample if sample.scope == self.registry.scope and sample.cls in ("prefer", "avoid") else None

    def _served_by(self, sample: SampleRecord, version: str) -> bool:
        return sample.version_scope == self.registry.scope and sample.serving_version == version

    def _arm(self, sample: SampleRecord, canary: str, stable: str | None) -> str | None:
        """Which arm a personal scope's labeled turn is evidence for: the canary, stable (the scope's own
        stable, or what serves it while it has none), or neither (an earlier candidate of the scope)."""
        if self._served_by(sample, canary):
            return "canary"
        if sample.version_scope != self.registry.scope or sample.serving_version == stable:
            return "stable"
        return None

    def _stable_history(self, state: CanaryState, limit: int = 2000) -> list[int]:
        """The user's newest labeled stable turns from before the canary started, oldest first."""
        start = f"({int(state.started_at * 1000)}-0"
        stable = self.registry.alias("stable")
        latest: dict[str, SampleRecord] = {}
        for _, fields in self.registry.redis.xrevrange(SAMPLES_STREAM, max=start, count=limit):
            sample = self._scope_sample(fields.get(b"record") or fields["record"])
            if sample is not None and sample.turn_id not in latest and self._arm(sample, state.version, stable) == "stable":
                latest[sample.turn_id] = sample
        ordered = sorted(latest.values(), key=lambda s: s.created_at)
        return [s.reward if s.reward else (1 if s.cls == "prefer" else -1) for s in ordered]

    def _collect_personal(self, state: CanaryState) -> Evidence:
        if self._canary != state.version:
            self._reset(state)
            self._stable_before = self._stable_history(state)
        raw, self._sample_cursor = self._read(SAMPLES_STREAM, self._sample_cursor)
        stable = self.registry.alias("stable")
        for item in raw:
            sample = self._scope_sample(item)
            if sample is None:
                continue
            known = self._labels.get(sample.turn_id)
            if known is None or sample.revision >= known[0]:
                self._labels[sample.turn_id] = (sample.revision, self._arm(sample, state.version, stable), sample.cls)
        canary = tuple(1 if cls == "prefer" else -1 for _, arm, cls in self._labels.values() if arm == "canary")
        stable = tuple(self._stable_before) + tuple(
            1 if cls == "prefer" else -1 for _, arm, cls in self._labels.values() if arm == "stable")
        health = self._health(state)
        return Evidence(canary, stable, tuple(state.inherited), requests=health.requests, errors=health.errors)

    # -- the loop body --------------------------------------------------------------------------
    def tick(self) -> Decision | None:
        """One check of every scope: start a canary if one is due, else decide on the running one.

        Returns the decision of this controller's own scope (the global one, for the global controller).
        """
        decision = self._tick_scope()
        if self.registry.scope == GLOBAL_SCOPE:
            for scope in self.registry.scopes()[1:]:
                sub = self._scoped.get(scope)
                if sub is None:
                    sub = self._scoped[scope] = Controller(self.control.scoped(scope), self.policy, self.clock,
                                                           self.personal)
                try:
                    sub._tick_scope()
                except RegistryError as exc:  # one scope's trouble never stops the others
                    log.warning("controller_scope_failed", scope=scope, error=str(exc))
                    sub.registry.log(AuditEvent(kind="controller_error", actor="controller", reason=str(exc)))
        self.control.sync()  # routing table and drain-delayed unloads
        return decision

    def _tick_scope(self) -> Decision | None:
        reg = self.registry
        if reg.frozen():
            return None
        state = reg.canary_state()
        if state is None:
            return self._start_next()
        return self._decide(state) if reg.scope == GLOBAL_SCOPE else self._decide_personal(state)

    def _supersede(self, state: CanaryState, evidence: Evidence) -> Decision | None:
        """A personal canary still undecided gives way to the newest gated version trained on top of it: that
        one holds the canary's training and the user's newer turns, so the user's next turns are better spent
        on it. It inherits the canary's labeled turns (and those the canary inherited), at the policy's weight."""
        tip = pending_tip(self.registry.versions(), state.version)
        if tip is None:
            return None
        reason = f"superseded by {tip}, trained on top of it with the user's newer turns"
        inherited = evidence.inherited + evidence.canary
        fraction = self._first_fraction()
        if len(evidence.stable) < self.personal.stable_min:  # stable's share goes on until it has its turns
            fraction = min(fraction, state.fraction)
        self.control.supersede(tip, fraction, "controller", reason, {"rule": "personal"}, inherited)
        log.info("canary_superseded", scope=self.registry.scope, version=state.version, by=tip)
        return Decision("step", reason, {"version": tip, "superseded": state.version, "inherited": len(inherited)},
                        fraction)

    def _first_fraction(self) -> float:
        return self.policy.steps[0] if self.registry.scope == GLOBAL_SCOPE else self.personal.fraction

    def _start_next(self) -> Decision | None:
        """Canary the tip of the gated chain that extends the current stable (``registry.lineage``).

        The learner trains on top of the running canary and the gated versions after it, so versions
        waiting behind a canary become eligible once it is promoted, and the newest of them carries
        the training of all; one whose parent was rolled back, rejected or failed the gate can never
        extend stable and is rejected as stale.
        """
        stable = self.registry.alias("stable")
        floor = int(stable.lstrip("v")) if stable else 0
        versions = self.registry.versions()
        states = {i.version: i.state for i in versions}
        waiting = [i for i in versions if i.state == "gated_pass" and int(i.version.lstrip("v")) > floor]
        for info in waiting:
            if info.parent != stable and states.get(info.parent or "") in ("rolled_back", "rejected", "gated_fail"):
                self.control.reject(info.version, "controller", f"stale lineage: parent {info.parent} will never be stable",
                                    {"parent": info.parent, "parent_state": states.get(info.parent or ""), "stable": stable})
        chain = pending_chain(waiting, stable)
        if not chain:
            return None
        version, links = chain[-1], chain[:-1]  # the links are never canaried themselves
        carries = f"; it carries the training of {', '.join(links)}" if links else ""
        try:
            self.control.start_canary(version, self._first_fraction(), "controller",
                                      f"passed the gate; newest gated version extending stable{carries}")
        except CanaryRunning:  # the gate started one since this tick looked: decide on it next tick
            return None
        return Decision("step", f"canary {version} started", {"version": version}, self._first_fraction())

    def _decide(self, state: CanaryState) -> Decision:
        canary, stable, health = self._collect(state)
        now = self.clock()
        decision = decide(canary, stable, health, state.step, now - state.started_at, now - state.step_started_at,
                          self.policy)
        evidence = {**decision.evidence, "compared_to": state.stable_at_start}
        if decision.action == "promote":
            self.control.promote(state.version, "controller", decision.reason, evidence)
        elif decision.action == "rollback":
            self.control.rollback("controller", decision.reason, evidence)
        elif decision.action == "reject":
            self.control.reject(state.version, "controller", decision.reason, evidence)
        elif decision.action == "step" and decision.fraction is not None:
            self.control.step_canary(decision.fraction, state.step + 1, "controller", decision.reason, evidence)
        if decision.action != "continue":
            log.info("canary_decision", version=state.version, action=decision.action, reason=decision.reason)
        return decision

    def _decide_personal(self, state: CanaryState) -> Decision:
        evidence = self._collect_personal(state)
        verdict = decide_personal(evidence, self.personal, self.clock() - state.started_at)
        if verdict.action in ("continue", "share"):  # undecided: a newer version takes its place
            superseded = self._supersede(state, evidence)
            if superseded is not None:
                return superseded
        stats = {**verdict.evidence, "compared_to": state.stable_at_start, "rule": "personal"}
        if verdict.action == "promote":
            self.control.promote(state.version, "controller", verdict.reason, stats)
        elif verdict.action == "rollback":
            self.control.rollback("controller", verdict.reason, stats)
        elif verdict.action == "reject":
            self.control.reject(state.version, "controller", verdict.reason, stats)
        elif verdict.action == "share":
            if state.fraction <= self.personal.share_fraction:  # already sharing: keep collecting
                return Decision("continue", verdict.reason, stats)
            self.control.step_canary(self.personal.share_fraction, state.step + 1, "controller", verdict.reason, stats)
        if verdict.action != "continue":
            log.info("canary_decision", scope=self.registry.scope, version=state.version, action=verdict.action,
                     reason=verdict.reason)
        return Decision(verdict.action, verdict.reason, stats)

    def run(self, interval: float, stop: threading.Event) -> None:
        """Tick every ``interval`` seconds until ``stop`` is set; errors are logged as events, not lost."""
        while not stop.is_set():
            try:
                self.tick()
            except RegistryError as exc:
                log.warning("controller_tick_failed", error=str(exc))
                self.registry.log(AuditEvent(kind="controller_error", actor="controller", reason=str(exc)))
            except (redis.RedisError, *CLUSTER_UNREACHABLE) as exc:  # Redis is down: nothing can change, try again next tick
                log.warning("controller_redis_unavailable", error=str(exc))
            self._wait(interval, stop)

    def _wait(self, interval: float, stop: threading.Event) -> None:
        """Until the next tick, reload at once (every second) what the proxy finds missing upstream."""
        deadline = time.monotonic() + interval
        while not stop.wait(min(1.0, max(0.0, deadline - time.monotonic()))) and time.monotonic() < deadline:
            try:
                self.control.publisher.reload_missing(self.registry)
            except (PolicyServerError, RegistryError, redis.RedisError) as exc:
                log.warning("reload_missing_failed", error=str(exc))


def start_in_thread(control: Control, policy: CanaryPolicy, interval: float, stop: threading.Event,
                    personal: PersonalPolicy | None = None) -> threading.Thread:
    """Run the controller inside another process (e.g. the learner) until ``stop`` is set."""
    thread = threading.Thread(target=Controller(control, policy, personal=personal).run, args=(interval, stop),
                              name="canary-controller", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nextstate controller", description="Run the canary controller.")
    parser.add_argument("--once", action="store_true", help="run one check and exit")
    parser.add_argument("--interval", type=float, default=None, help="seconds between checks")
    args = parser.parse_args(argv)
    settings = RegistrySettings()
    configure_logging(settings.log_level, settings.log_json)
    with ExitStack() as stack:
        controller = Controller(open_control(settings, stack), canary_policy(settings),
                                personal=personal_policy(settings))
        if args.once:
            decision = controller.tick()
            print(decision.action + ": " + decision.reason if decision else "nothing to do")
            return 0
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        retention.start_in_thread(controller.registry.redis, settings.retention_days, settings.retention_interval_s, stop)
        sweep.start_in_thread(controller.registry, settings.staging_grace_s, stop)
        try:
            controller.run(args.interval or settings.controller_interval, stop)
        except KeyboardInterrupt:
            stop.set()
    return 0
