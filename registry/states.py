"""The version state machine: which state changes are legal, as a pure table.

``candidate → gated_pass | gated_fail``; ``gated_pass → canary``; ``canary → promoted | rolled_back |
rejected``. An operator may also reject a version before it reaches users, promote a gated version
without a canary, and roll back a promoted one. Everything else is refused.
"""

from __future__ import annotations

from registry.errors import IllegalTransition
from registry.records import VersionState

TRANSITIONS: dict[VersionState, frozenset[VersionState]] = {
    "candidate": frozenset({"gated_pass", "gated_fail", "rejected"}),
    "gated_pass": frozenset({"canary", "promoted", "rejected"}),
    "gated_fail": frozenset(),
    "canary": frozenset({"promoted", "rolled_back", "rejected"}),
    "promoted": frozenset({"rolled_back"}),
    "rolled_back": frozenset(),
    "rejected": frozenset(),
}

# states in which a version may be served (named in the routing table); a gate failure never is
SERVABLE: frozenset[VersionState] = frozenset({"canary", "promoted"})

__all__ = ["SERVABLE", "TRANSITIONS", "IllegalTransition", "can_transition", "check_transition"]


def can_transition(current: VersionState, target: VersionState) -> bool:
    return target in TRANSITIONS[current]


def check_transition(version: str, current: VersionState, target: VersionState) -> None:
    """Raise ``IllegalTransition`` with a message that says what is allowed instead."""
    if not can_transition(current, target):
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (final state)"
        raise IllegalTransition(f"{version} is {current}; it cannot become {target} (allowed: {allowed})")
