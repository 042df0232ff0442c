"""The pure routing decision, on a literal table."""

from __future__ import annotations

import pytest

from proxy.records import RoutingTable
from proxy.routing import Decision, UnknownVersion, route, slice_position

TABLE = RoutingTable(
    revision=3, base_model="tiny", stable="v2", canary="v3", canary_fraction=0.25,
    versions={"v1": "tiny@v1", "v2": "tiny@v2", "v3": "tiny@v3"},
)
# session keys whose slice position falls below / above 0.25
LOW = next(f"s{i}" for i in range(1000) if slice_position(f"s{i}") < 0.25)
HIGH = next(f"s{i}" for i in range(1000) if slice_position(f"s{i}") >= 0.25)


@pytest.mark.parametrize(
    ("table", "pin", "canary", "model", "key", "expected"),
    [
        (None, None, None, "m", LOW, Decision(None, None, "base")),
        (RoutingTable(base_model="tiny"), None, "1", "m", LOW, Decision(None, None, "base")),
        (TABLE, "v1", None, "m", LOW, Decision("tiny@v1", "v1", "pinned")),
        (TABLE, None, None, "tiny@v1", LOW, Decision("tiny@v1", "v1", "pinned")),
        (TABLE, "v1", "1", "tiny@v3", LOW, Decision("tiny@v1", "v1", "pinned")),  # header pin wins
        (TABLE, None, "1", "m", HIGH, Decision("tiny@v3", "v3", "canary")),
        (TABLE, None, "0", "m", LOW, Decision("tiny@v2", "v2", "stable")),
        (TABLE, None, None, "m", LOW, Decision("tiny@v3", "v3", "canary")),
        (TABLE, None, None, "m", HIGH, Decision("tiny@v2", "v2", "stable")),
        (TABLE, None, "maybe", "m", HIGH, Decision("tiny@v2", "v2", "stable")),
        (TABLE.model_copy(update={"canary": None}), None, "1", "m", LOW, Decision("tiny@v2", "v2", "stable")),
        (TABLE.model_copy(update={"stable": None}), None, "0", "m", LOW, Decision("tiny", None, "base")),
        (TABLE.model_copy(update={"canary_fraction": 0.0}), None, None, "m", LOW, Decision("tiny@v2", "v2", "stable")),
        (TABLE.model_copy(update={"canary_fraction": 1.0}), None, None, "m", HIGH, Decision("tiny@v3", "v3", "canary")),
    ],
)
def test_route_table(table, pin, canary, model, key, expected) -> None:
    assert route(table, pin_header=pin, canary_header=canary, requested_model=model, session_key=key) == expected


@pytest.mark.parametrize(("table", "pin", "model"), [(TABLE, "v9", "m"), (TABLE, None, "tiny@v9"), (None, "v1", "m")])
def test_unknown_pinned_version_raises(table, pin, model) -> None:
    with pytest.raises(UnknownVersion):
        route(table, pin_header=pin, canary_header=None, requested_model=model, session_key="k")


def test_sticky_slice_is_stable_and_proportional() -> None:
    positions = [slice_position(f"session-{i}") for i in range(4000)]
    assert positions == [slice_position(f"session-{i}") for i in range(4000)]
    share = sum(p < 0.25 for p in positions) / len(positions)
    assert 0.22 < share < 0.28
