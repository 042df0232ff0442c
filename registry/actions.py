"""Registry actions — start a canary, step it, replace it, promote, roll back, reject, pin — each one atomic.

Every action takes the registry lock, loads what must be served before any alias names it (so
``stable`` always points at a loadable, loaded version), changes states and aliases (each change goes
to the audit log with its actor, reason and evidence) in one Redis transaction, so a process killed
half-way leaves all of them or none, rewrites the routing table, and finally lets the publisher unload
what nothing references any more (after the drain delay). The lock is a lease its live holder renews
(``registry.lease``): a killed action's lock frees itself within one lease, and the action is decided
again by whoever acts next: its decision is logged once. The CLI, the admin app and the canary
controller all call these, so they behave identically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog

from proxy.records import RoutingTable
from registry.errors import CanaryRunning, PolicyServerError
from registry.publisher import Publisher
from registry.records import AuditEvent, CanaryState
from registry.routing import sync_routing
from registry.states import check_transition
from registry.store import Registry, RegistryError

log = structlog.get_logger(__name__)


@dataclass
class Control:
    registry: Registry
    publisher: Publisher

    def scoped(self, scope: str) -> Control:
        """The actions of another learning scope (same store, same policy servers)."""
        return self if scope == self.registry.scope else Control(self.registry.scoped(scope), self.publisher)

    def sync(self) -> RoutingTable:
        """Rewrite the routing table if needed and reconcile the policy servers with it.

        What the table names was loaded before any alias named it, so a failing replica here can only
        delay an unload (or a load on a replica that came back); the next sync retries.
        """
        table = sync_routing(self.registry)
        try:
            self.publisher.reconcile(self.registry)
        except PolicyServerError as exc:
            log.warning("policy_server_reconcile_failed", error=str(exc))
        return table

    def _load(self, version: str) -> None:
        info = self.registry.check_loadable(version)
        self.publisher.ensure_loaded(info.served_name, str(self.registry.path_of(info)))

    # -- canary ---------------------------------------------------------------------------------
    def start_canary(self, version: str, fraction: float, actor: str, reason: str = "",
                     evidence: dict[str, Any] | None = None) -> CanaryState:
        reg = self.registry
        with reg.lock():
            running = reg.canary_state()
            if running is not None:
                raise CanaryRunning(f"canary {running.version} is still running; finish it first")
            if reg.frozen():
                raise RegistryError("the registry is pinned; release it (`registry pin --release`) first")
            info = reg.get(version)
            if info.state != "gated_pass":
                raise RegistryError(f"{version} is {info.state}; only a version that passed the gate gets traffic")
            self._load(version)
            state = CanaryState(version=version, fraction=fraction, stable_at_start=reg.alias("stable"))
            with reg.atomic():
                reg.set_state(version, "canary", actor, reason or f"canary started at {fraction:.0%}",
                              kind="canary_started", evidence={"fraction": fraction, "stable": state.stable_at_start,
                                                               **(evidence or {})})
                reg.set_alias("canary", version, actor, "canary started")
                reg.save_canary_state(state)
            self.sync()
            return state

    def step_canary(self, fraction: float, step: int, actor: str, reason: str = "",
                    evidence: dict[str, Any] | None = None) -> CanaryState:
        reg = self.registry
        with reg.lock():
            state = self._running()
            old = state.fraction
            state = state.model_copy(update={"fraction": fraction, "step": step, "step_started_at": time.time()})
            with reg.atomic():
                reg.save_canary_state(state)
                reg.log(AuditEvent(kind="canary_step", version=state.version, actor=actor,
                                   reason=reason or f"canary fraction {old:.0%} -> {fraction:.0%}",
                                   evidence={"from": old, "to": fraction, "step": step, **(evidence or {})}))
            self.sync()
            return state

    def _running(self) -> CanaryState:
        state = self.registry.canary_state()
        if state is None:
            raise RegistryError("no canary is running")
        return state

    def _end_canary(self, actor: str, reason: str) -> None:
        self.registry.set_alias("canary", None, actor, reason)
        self.registry.save_canary_state(None)

    # -- decisions ------------------------------------------------------------------------------
    def promote(self, version: str | None, actor: str, reason: str = "",
                evidence: dict[str, Any] | None = None) -> None:
        """Make ``version`` (default: the running canary) stable; the old stable becomes previous."""
        reg = self.registry
        with reg.lock():
            canary = reg.canary_state()
            version = version or (canary.version if canary else None)
            if version is None:
                raise RegistryError("no canary is running; name the version to promote")
            if reg.frozen() and actor != "operator":
                raise RegistryError("the registry is pinned; automatic promotion is off")
            check_transition(version, reg.get(version).state, "promoted")
            self._load(version)
            old_stable = reg.alias("stable")
            with reg.atomic():  # the state, the canary's end and both aliases land together or not at all
                reg.set_state(version, "promoted", actor, reason or "promoted to stable", evidence=evidence)
                if canary is not None and canary.version == version:
                    self._end_canary(actor, f"{version} promoted")
                if old_stable is not None:
                    reg.set_alias("previous", old_stable, actor, f"{version} replaced it as stable")
                reg.set_alias("stable", version, actor, reason or "promoted", evidence)
            self.sync()

    def rollback(self, actor: str, reason: str = "", evidence: dict[str, Any] | None = None) -> str | None:
        """Roll back the running canary, or else stable to the previous stable version.

        Returns the version that was rolled back.
        """
        reg = self.registry
        with reg.lock():
            canary = reg.canary_state()
            if canary is not None:
                with reg.atomic():
                    reg.set_state(canary.version, "rolled_back", actor, reason or "canary rolled back",
                                  evidence=evidence)
                    self._end_canary(actor, f"{canary.version} rolled back")
                self.sync()
                return canary.version
            stable = reg.alias("stable")
            if stable is None:
                raise RegistryError("nothing to roll back: the base model is serving")
            target = self._previous_stable(stable)
            if target is not None:
                self._load(target)
            previous = self._previous_stable(target, skip=stable) if target else None
            with reg.atomic():
                reg.set_state(stable, "rolled_back", actor, reason or "stable rolled back", evidence=evidence)
                reg.set_alias("stable", target, actor, f"{stable} rolled back", evidence)
                reg.set_alias("previous", previous, actor, f"{stable} rolled back")
            self.sync()
            return stable

    def _previous_stable(self, current: str, skip: str | None = None) -> str | None:
        """The newest earlier stable version (not ``skip``) that is still promoted and loadable (None = base)."""
        for version in reversed(self.registry.stable_history()):
            if version in (current, skip):
                continue
            info = self.registry.get(version)
            if info.state == "promoted":
                try:
                    self.registry.check_loadable(version)
                except RegistryError:
                    continue
                return version
        return None

    def reject(self, version: str | None, actor: str, reason: str = "",
               evidence: dict[str, Any] | None = None) -> str:
        """Reject a version before it becomes stable (default: the running canary, i.e. abort)."""
        reg = self.registry
        with reg.lock():
            canary = reg.canary_state()
            version = version or (canary.version if canary else None)
            if version is None:
                raise RegistryError("no canary is running; name the version to reject")
            with reg.atomic():
                reg.set_state(version, "rejected", actor, reason or "rejected", evidence=evidence)
                if canary is not None and canary.version == version:
                    self._end_canary(actor, f"{version} rejected")
            self.sync()
            return version

    def supersede(self, version: str, fraction: float, actor: str, reason: str = "",
                  evidence: dict[str, Any] | None = None, inherited: tuple[int, ...] = ()) -> CanaryState:
        """Replace the running canary by ``version`` (a gated version trained on top of it) in one transaction.

        The old canary is rejected and the new one started together, so nobody reading the aliases in between
        (the learner choosing what to train on top of) sees no canary and picks an older branch. ``inherited``:
        the labeled turns the new canary carries over from those it replaces (a personal canary's evidence).
        """
        reg = self.registry
        with reg.lock():
            running = self._running()
            if reg.frozen():
                raise RegistryError("the registry is pinned; release it (`registry pin --release`) first")
            info = reg.get(version)
            if info.state != "gated_pass":
                raise RegistryError(f"{version} is {info.state}; only a version that passed the gate gets traffic")
            self._load(version)
            state = CanaryState(version=version, fraction=fraction, stable_at_start=reg.alias("stable"),
                                inherited=list(inherited))
            with reg.atomic():
                reg.set_state(running.version, "rejected", actor, reason or f"superseded by {version}",
                              evidence={"superseded_by": version, **(evidence or {})})
                reg.set_state(version, "canary", actor, f"replaces {running.version} as canary at {fraction:.0%}",
                              kind="canary_started", evidence={"fraction": fraction, "stable": state.stable_at_start,
                                                               "replaces": running.version,
                                                               "inherited": list(inherited)})
                reg.set_alias("canary", version, actor, f"replaces {running.version}")
                reg.save_canary_state(state)
            self.sync()
            return state

    def pin(self, version: str, actor: str = "operator", reason: str = "") -> None:
        """Serve ``version`` to everyone and stop automatic actions until released."""
        reg = self.registry
        info = reg.get(version)
        if info.state not in ("promoted", "gated_pass", "canary"):
            raise RegistryError(f"{version} is {info.state}; only a promoted, canary or gated version can be pinned")
        canary = reg.canary_state()
        if canary is not None and canary.version != version:
            self.reject(canary.version, actor, f"aborted: operator pinned {version}")
        reg.set_frozen(True)
        if reg.alias("stable") != version:
            if info.state == "promoted":
                with reg.lock():
                    self._load(version)
                    old = reg.alias("stable")
                    with reg.atomic():
                        if old is not None:
                            reg.set_alias("previous", old, actor, f"{version} pinned")
                        reg.set_alias("stable", version, actor, reason or "pinned by operator")
            else:
                self.promote(version, actor, reason or "pinned by operator")
        reg.log(AuditEvent(kind="pinned", version=version, actor=actor, reason=reason or "pinned by operator"))
        self.sync()

    def release(self, actor: str = "operator", reason: str = "") -> None:
        self.registry.set_frozen(False)
        self.registry.log(AuditEvent(kind="released", actor=actor, reason=reason or "automatic actions resumed"))
