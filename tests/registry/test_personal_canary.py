"""The personal canary rule on literal evidence; posterior probabilities checked against hand-computed values."""

from __future__ import annotations

import pytest

from registry.personal_canary import Evidence, PersonalPolicy, decide, prob_not_worse

POLICY = PersonalPolicy()


@pytest.mark.parametrize(
    ("a_c", "b_c", "a_s", "b_s", "margin", "expected"),
    [
        # P(X > Y), X ~ Beta(4, 1), Y ~ Beta(1, 4): 1 - 4 B(4, 5) = 1 - 4 * 3! 4! / 8! = 1 - 1/70
        (4, 1, 1, 4, 0.0, 1 - 1 / 70),
        # X ~ Beta(2, 1), Y ~ Beta(1, 2): 1 - 2 B(2, 3) = 5/6
        (2, 1, 1, 2, 0.0, 5 / 6),
        # two uniforms: P(X > Y - m) = 1 - (1 - m)^2 / 2
        (1, 1, 1, 1, 0.0, 0.5),
        (1, 1, 1, 1, 0.1, 1 - 0.81 / 2),
        (1, 1, 1, 1, -0.1, 0.81 / 2),
    ],
)
def test_posterior_probability_matches_closed_form(a_c, b_c, a_s, b_s, margin, expected) -> None:
    assert prob_not_worse(a_c, b_c, a_s, b_s, margin) == pytest.approx(expected, abs=2e-4)


def test_three_good_turns_against_an_unhappy_user_promote() -> None:
    # canary 3/3 -> Beta(4, 1); stable 1 of 6 -> Beta(2, 6); P(p_c > p_s - 0.1) is above 0.99
    verdict = decide(Evidence((1, 1, 1), (-1, -1, 1, -1, -1, -1)), POLICY, 60.0)
    assert verdict.action == "promote"
    assert verdict.evidence["canary"] == {"labeled": 3, "prefer": 3} and verdict.evidence["p_not_worse"] > 0.99


def test_too_few_turns_wait() -> None:
    # two good turns are not enough (min_labeled 3), whatever the posterior says
    assert decide(Evidence((1, 1), (-1,) * 6), POLICY, 60.0).action == "continue"


def test_promotion_waits_for_a_good_newest_turn() -> None:
    # 3 of 4 good, but the newest was a failure: no promotion on that turn
    assert decide(Evidence((1, 1, 1, -1), (-1,) * 6), POLICY, 60.0).action == "continue"


def test_three_negative_reactions_in_a_row_roll_back_at_once() -> None:
    verdict = decide(Evidence((-1, -1, -1), (-1, 1, -1)), POLICY, 60.0)
    assert verdict.action == "rollback" and "last 3 reactions" in verdict.reason
    # two are not enough: the user's corrections are noisy (a wrong fact draws one whatever the style)
    assert decide(Evidence((-1, -1), (-1, 1, -1)), POLICY, 60.0).action == "continue"


def test_a_mixed_start_against_a_mixed_stable_waits() -> None:
    # canary 2/3 -> Beta(3, 2), stable 2/4 -> Beta(3, 3): neither claim reaches 0.9 yet
    verdict = decide(Evidence((1, -1, 1), (1, -1, 1, -1)), POLICY, 60.0)
    assert verdict.action == "continue"
    assert verdict.evidence["p_not_worse"] < 0.9 and verdict.evidence["p_clearly_worse"] < 0.9


def test_clearly_worse_than_a_happy_stable_rolls_back() -> None:
    # no two failures in a row, but 3 of 6 against 10/10 (Beta(4, 4) vs Beta(11, 1)): P(p_c <= p_s - 0.1) ~ 0.96
    verdict = decide(Evidence((1, -1, 1, -1, 1, -1), (1,) * 10), POLICY, 60.0)
    assert verdict.action == "rollback" and "worse than stable" in verdict.reason
    assert verdict.evidence["p_clearly_worse"] == pytest.approx(1 - verdict.evidence["p_not_worse"], abs=1e-4)
    assert verdict.evidence["p_clearly_worse"] >= 0.9


def test_worse_only_within_doubt_waits() -> None:
    # 2 of 3 against 8/8 (Beta(3, 2) vs Beta(9, 1)): P(p_c <= p_s - 0.1) ~ 0.81, below 0.9 -- not clearly worse yet
    verdict = decide(Evidence((1, -1, 1), (1,) * 8), POLICY, 60.0)
    assert verdict.action == "continue" and 0.75 < verdict.evidence["p_clearly_worse"] < 0.9


def test_inherited_turns_count_at_half_weight() -> None:
    # one own good turn + 4 inherited good turns at weight 0.5 = 3 effective turns: Beta(4, 1) vs Beta(1, 7)
    verdict = decide(Evidence((1,), (-1,) * 6, inherited=(1, 1, 1, 1)), POLICY, 60.0)
    assert verdict.action == "promote" and "4 inherited" in verdict.reason
    assert verdict.evidence["inherited"] == {"labeled": 4, "prefer": 4, "weight": 0.5}
    # 1 own + 2 inherited = 2 effective turns: not yet; and inherited turns alone never promote
    assert decide(Evidence((1,), (-1,) * 6, inherited=(1, 1)), POLICY, 60.0).action == "continue"
    assert decide(Evidence((), (-1,) * 6, inherited=(1,) * 8), POLICY, 60.0).action == "continue"


def test_inherited_failures_weigh_against_promotion() -> None:
    # 3 own good turns, but 6 inherited failures (3 effective): Beta(4, 4) vs stable 2 of 6 (Beta(3, 5))
    verdict = decide(Evidence((1, 1, 1), (1, 1, -1, -1, -1, -1), inherited=(-1,) * 6), POLICY, 60.0)
    assert verdict.action == "continue" and verdict.evidence["p_not_worse"] < 0.9


def test_inconclusive_at_the_limit_rejects() -> None:
    policy = PersonalPolicy(max_labeled=4)
    assert decide(Evidence((1, -1, 1, -1), (1, -1) * 4), policy, 60.0).action == "reject"
    assert decide(Evidence((1,), (1, -1)), PersonalPolicy(deadline_seconds=10.0), 11.0).action == "reject"


def test_inherited_turns_count_at_their_weight_towards_the_limit() -> None:
    # 2 own + 11 inherited at 0.5 = 7.5 effective turns: still collecting (counted whole, 13, it was rejected)
    mixed = (1, -1) * 5 + (1,)
    assert decide(Evidence((1, -1), (1, -1) * 3, inherited=mixed), POLICY, 60.0).action == "continue"
    # 6 own + 12 inherited = 12 effective: inconclusive, rejected
    verdict = decide(Evidence((1, -1) * 3, (1, -1) * 3, inherited=(1, -1) * 6), POLICY, 60.0)
    assert verdict.action == "reject" and "12 inherited" in verdict.reason


def test_error_rate_breach_rolls_back() -> None:
    verdict = decide(Evidence((1, 1, 1), (-1,) * 6, requests=20, errors=5), POLICY, 60.0)
    assert verdict.action == "rollback" and "error rate" in verdict.reason


def test_inconclusive_with_a_thin_stable_shares_the_user_before_rejecting() -> None:
    # the chain of a run: 4 of its own 5 good, 8 of 14 inherited, against a stable that pleased 3 of 4
    own, inherited, stable = (1, 1, -1, 1, 1), (1, -1, 1, 1, -1, -1, 1, -1, 1, 1, 1, 1, -1, -1), (1, 1, -1, 1)
    verdict = decide(Evidence(own, stable, inherited=inherited), POLICY, 60.0)
    assert verdict.action == "share" and "4 labeled stable turns" in verdict.reason
    assert verdict.evidence["p_not_worse"] == pytest.approx(0.618, abs=0.01)
    # the same once stable has its 6 turns: an inconclusive verdict rejects
    assert decide(Evidence(own, (*stable, 1, -1), inherited=inherited), POLICY, 60.0).action == "reject"
    # and with a thin stable still, at twice the limit
    assert decide(Evidence((1, -1) * 12, stable), POLICY, 60.0).action == "reject"
    # past the deadline nothing waits for stable
    assert decide(Evidence(own, stable, inherited=inherited), POLICY, POLICY.deadline_seconds).action == "reject"


def test_at_the_limit_its_own_turns_alone_can_promote() -> None:
    # the chain of a run: 6 of its own 6 good, 7 of 13 inherited (6.5 effective) against stable's 4 of 6
    own, stable = (1,) * 6, (1, 1, -1, 1, -1, 1)
    inherited = (1, -1, 1, -1, 1, 1, 1, -1, -1, -1, -1, 1, 1)
    # pooled, Beta(1 + 6 + 3.5, 1 + 3) against Beta(5, 3): P = 0.84, inconclusive at 12.5 effective turns
    # alone, Beta(7, 1) against Beta(5, 3): P = 0.96
    verdict = decide(Evidence(own, stable, inherited=inherited), POLICY, 60.0)
    assert verdict.action == "promote" and "its own 6 labeled turns alone" in verdict.reason
    assert verdict.evidence["p_not_worse"] == pytest.approx(0.841, abs=0.01)
    assert verdict.evidence["p_own_not_worse"] == pytest.approx(0.963, abs=0.01)
    # before the limit the pooled test decides: 5 own + 13 inherited = 11.5 effective, still collecting
    assert decide(Evidence(own[:5], stable, inherited=inherited), POLICY, 60.0).action == "continue"
    # at the limit, a newest turn that failed, or own turns that alone do not pass, reject as before
    assert decide(Evidence((*own[:5], -1), stable, inherited=inherited), POLICY, 60.0).action == "reject"
    assert decide(Evidence((1, -1, -1, 1, -1, 1), stable, inherited=inherited), POLICY, 60.0).action == "reject"
