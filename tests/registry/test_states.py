"""The version state machine as a literal table."""

from __future__ import annotations

import pytest

from registry.states import IllegalTransition, can_transition, check_transition

TABLE = [
    ("candidate", "gated_pass", True),
    ("candidate", "gated_fail", True),
    ("candidate", "rejected", True),
    ("candidate", "canary", False),
    ("candidate", "promoted", False),
    ("gated_pass", "canary", True),
    ("gated_pass", "promoted", True),
    ("gated_pass", "rejected", True),
    ("gated_pass", "gated_fail", False),
    ("gated_fail", "canary", False),
    ("gated_fail", "promoted", False),
    ("gated_fail", "gated_pass", False),
    ("canary", "promoted", True),
    ("canary", "rolled_back", True),
    ("canary", "rejected", True),
    ("canary", "candidate", False),
    ("promoted", "rolled_back", True),
    ("promoted", "canary", False),
    ("rolled_back", "promoted", False),
    ("rolled_back", "canary", False),
    ("rejected", "canary", False),
    ("rejected", "promoted", False),
]


@pytest.mark.parametrize(("current", "target", "allowed"), TABLE)
def test_transition_table(current: str, target: str, allowed: bool) -> None:
    assert can_transition(current, target) is allowed  # type: ignore[arg-type]


def test_illegal_transition_message_names_what_is_allowed() -> None:
    with pytest.raises(IllegalTransition, match=r"v3 is gated_fail; it cannot become canary \(allowed: nothing"):
        check_transition("v3", "gated_fail", "canary")
    with pytest.raises(IllegalTransition, match="allowed: canary, promoted, rejected"):
        check_transition("v4", "gated_pass", "rolled_back")
