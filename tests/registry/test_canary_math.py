"""The canary decision and its confidence sequence, as literal tables."""

from __future__ import annotations

import random

import pytest

from registry.canary import ArmCounts, CanaryPolicy, Health, decide, difference_interval, p99, radius

POLICY = CanaryPolicy(steps=(0.05, 0.25, 0.5), step_samples=20, min_samples=40, margin=0.3, alpha=0.05,
                      deadline_seconds=3600, max_error_rate=0.1, max_p99_ms=5000, health_min_requests=10)
OK = Health(requests=100, errors=1, p99_ms=800.0, turns=100)

# canary (prefer, avoid), stable (prefer, avoid), health, step, elapsed, step_elapsed -> action, fraction
TABLE = [
    ((0, 0), (0, 0), OK, 0, 0, 0, "continue", None),
    ((10, 5), (200, 100), OK, 0, 60, 60, "continue", None),  # 15 < 20 labeled at step 0
    ((14, 6), (200, 100), OK, 0, 60, 60, "step", 0.25),
    ((28, 12), (200, 100), OK, 1, 60, 60, "step", 0.5),
    ((28, 11), (200, 100), OK, 1, 60, 60, "continue", None),  # 39 < 40 labeled for step 1
    ((60, 20), (300, 100), OK, 2, 60, 60, "promote", None),  # last step, equal rates, n >= 40
    ((60, 20), (300, 100), OK, 1, 60, 60, "step", 0.5),  # promotion waits for the last step
    ((2, 38), (300, 100), OK, 1, 60, 60, "rollback", None),  # much worse: hi < 0
    ((24, 16), (300, 100), OK, 2, 60, 60, "continue", None),  # 0.60 vs 0.75: neither proven
    ((24, 16), (300, 100), OK, 2, 3600, 60, "reject", None),  # ... until the deadline
    ((30, 10), (300, 100), Health(requests=50, errors=6), 2, 60, 60, "rollback", None),  # 12% errors
    ((30, 10), (300, 100), Health(requests=5, errors=5), 0, 60, 60, "step", 0.25),  # too few requests to judge health
    ((30, 10), (300, 100), Health(requests=50, errors=0, p99_ms=9000.0, turns=50), 2, 60, 60, "rollback", None),
]


@pytest.mark.parametrize(("c", "s", "health", "step", "elapsed", "step_elapsed", "action", "fraction"), TABLE)
def test_decision_table(c: tuple[int, int], s: tuple[int, int], health: Health, step: int, elapsed: float,
                        step_elapsed: float, action: str, fraction: float | None) -> None:
    decision = decide(ArmCounts(*c), ArmCounts(*s), health, step, elapsed, step_elapsed, POLICY)
    assert (decision.action, decision.fraction) == (action, fraction), decision.reason
    assert decision.evidence["canary"]["prefer"] == c[0] and "interval" in decision.evidence


def test_step_seconds_hold_a_step() -> None:
    policy = CanaryPolicy(step_samples=1, step_seconds=600)
    assert decide(ArmCounts(5, 0), ArmCounts(5, 0), Health(), 0, 100, 100, policy).action == "continue"
    assert decide(ArmCounts(5, 0), ArmCounts(5, 0), Health(), 0, 700, 700, policy).action == "step"


@pytest.mark.parametrize(("n", "expected"), [(0, 1.0), (10, 0.764), (100, 0.166), (1000, 0.054)])
def test_radius_values(n: int, expected: float) -> None:
    assert radius(n, 0.025, 5.0) == pytest.approx(expected, abs=1e-3)


def test_interval_and_p99_tables() -> None:
    assert difference_interval(ArmCounts(0, 0), ArmCounts(5, 5), 0.05, 5.0) == (-1.0, 1.0)
    lo, hi = difference_interval(ArmCounts(500, 500), ArmCounts(500, 500), 0.05, 5.0)
    assert lo == pytest.approx(-2 * radius(1000, 0.025, 5.0)) and hi == pytest.approx(-lo)
    assert p99([]) is None and p99([5.0]) == 5.0 and p99([float(i) for i in range(1, 101)]) == 99.0
    assert p99([float(i) for i in range(1, 201)]) == 198.0


def test_equal_arms_are_rarely_rolled_back_under_continuous_monitoring() -> None:
    """Anytime validity: checking after every label keeps false rollbacks below alpha (measured)."""
    rng = random.Random(7)
    false_rollbacks = 0
    for _ in range(200):
        c, s = [0, 0], [0, 0]
        for _ in range(300):
            c[rng.random() < 0.7] += 1  # index 1 = prefer with p 0.7
            s[rng.random() < 0.7] += 1
            _lo, hi = difference_interval(ArmCounts(c[1], c[0]), ArmCounts(s[1], s[0]), 0.05, 5.0)
            if hi < 0:
                false_rollbacks += 1
                break
    assert false_rollbacks / 200 <= 0.05
