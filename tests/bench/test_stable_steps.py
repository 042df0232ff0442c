"""PrefBench's check that a new stable never serves the user worse than the one before (pure, hand-computed)."""

from __future__ import annotations

import math

import pytest

from bench.prefbench.stable_steps import sign_test_p, stable_step_lines, stable_steps


def point(at: int, stable: str | None, satisfied: list[int], facts: list[int], method: str = "combined",
          seed: int = 0) -> dict[str, object]:
    return {"method": method, "persona": "terse", "seed": seed, "interactions": at, "stable": stable,
            "satisfaction": sum(satisfied) / len(satisfied), "fact_accuracy": sum(facts) / len(facts),
            "satisfied": satisfied, "facts_ok": facts}


@pytest.mark.parametrize(("worse", "better", "expected"), [
    (0, 0, 1.0),  # no prompt changed: nothing to test
    (1, 0, 0.5),
    (4, 0, 1 / 16),
    (5, 0, 1 / 32),  # the smallest all-one-way drop beyond 0.05
    (5, 1, 7 / 64),  # P(X >= 5), X ~ Bin(6, 1/2) = (6 + 1) / 64
    (0, 3, 1.0),
])
def test_sign_test(worse: int, better: int, expected: float) -> None:
    assert sign_test_p(worse, better) == pytest.approx(expected)


def test_only_a_change_of_stable_is_a_step_and_it_is_judged_on_the_prompts_that_changed() -> None:
    points = [point(0, None, [0, 0, 1, 1, 1, 1, 1, 1], [1] * 8),
              point(6, None, [0, 0, 1, 1, 1, 1, 1, 1], [1] * 8),  # same stable: no step
              point(12, "v2", [1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]),
              point(18, "v3", [1, 1, 0, 0, 0, 0, 0, 0], [1] * 8)]
    steps = stable_steps(reversed(points))  # any order: each run's checkpoints are sorted
    assert [(s.interactions, s.before, s.after, s.measure) for s in steps] == [
        (12, "base", "v2", "satisfaction"), (12, "base", "v2", "facts"),
        (18, "v2", "v3", "satisfaction"), (18, "v2", "v3", "facts")]
    up, one_fact, down, facts_back = steps
    assert (up.change, up.p_value, up.beyond_noise) == (0.25, 1.0, False)
    assert (one_fact.change, one_fact.p_value, one_fact.beyond_noise) == (-0.125, 0.5, False)
    assert down.change == -0.75 and down.p_value == pytest.approx(1 / 64) and down.beyond_noise  # 6 worse, 0 better
    assert facts_back.change == 0.125 and not facts_back.beyond_noise


def test_the_lines_count_the_learning_runs_and_name_the_drops_beyond_noise() -> None:
    points = [point(0, None, [0] * 8, [1] * 8), point(6, "v1", [1] * 8, [1] * 8),
              point(12, "v2", [1, 1, 0, 0, 0, 0, 0, 0], [1] * 8),
              point(0, None, [1] * 8, [1] * 8, seed=1), point(6, "v1", [1] * 7 + [0], [1] * 8, seed=1),
              point(0, None, [0] * 8, [1] * 8, method="none"), point(6, "v9", [1] * 8, [0] * 8, method="none")]
    lines = stable_step_lines(points)
    assert lines[0] == ("stable changes (satisfaction): 3; lower than the stable before: 2; beyond noise (p < 0.05): 1; "
                        "largest change down: -0.75 (combined/terse/s0 @12, v1 -> v2, p = 0.02)")
    assert lines[1] == "  beyond noise: combined/terse/s0 @12 v1 -> v2: 1.00 -> 0.25 (p = 0.016)"
    assert lines[2] == ("stable changes (facts): 3; lower than the stable before: 0; beyond noise (p < 0.05): 0; "
                        "largest change down: none")
    assert len(lines) == 3  # the method none has no learner: its stable never changes, whatever a point says


def test_checkpoints_without_per_prompt_outcomes_are_not_tested() -> None:
    old = [{"method": "combined", "persona": "quiet", "seed": 2, "interactions": x, "stable": v,
            "satisfaction": s, "fact_accuracy": 0.9} for x, v, s in ((0, None, 0.9), (6, "v1", 0.1))]
    [step, _] = stable_steps(old)
    assert step.change == pytest.approx(-0.8) and math.isnan(step.p_value) and not step.beyond_noise
