"""The canary of a personal learning scope: promote or roll back on one user's own next turns (pure).

A personal scope has one user, so the statistical canary of the shared scope (``registry.canary``:
tens of labeled turns per arm) would never finish. Here the evidence is that user's labeled turns:
the candidate serves a share of the user's conversations (``fraction``, sticky per conversation), and
each labeled turn is a success (``prefer``) or a failure (``avoid``) of the version that served it.

The rule (``decide``), with the numbers of ``PersonalPolicy``'s defaults:

- Prior: each arm's success rate ``p`` is Beta(1, 1) (uniform: no opinion before the user speaks).
  The stable arm's evidence is the user's recent labeled turns on stable, the turns before the canary
  started included (``stable_window`` of them) — the dissatisfaction the candidate was trained on.
- Promote when the candidate has at least ``min_labeled`` (3) labeled turns, its newest one is not a
  failure, and ``P(p_canary > p_stable - margin) >= confidence`` under the posteriors (margin 0.10,
  confidence 0.90): the candidate is not worse than stable beyond the margin, with that confidence.
- Roll back at once when the user's reactions to the candidate turn negative: its ``rollback_run`` (2)
  newest labeled turns are both failures and it is more likely worse than stable beyond the margin
  than not (``P(p_canary > p_stable - margin) < 0.5``), or ``P(p_canary < p_stable - margin) >=
  confidence`` (clearly worse). Two failures of a candidate serving a user who was no happier with
  stable are no reason to go back to stable: the candidate stays, and once it has had ``min_labeled``
  turns without a decision, the newer candidate the learner trained on top of it replaces it in the
  canary (``registry.controller``), carrying its training.
- Reject when ``max_labeled`` (12) candidate turns or the deadline pass without a decision; roll back
  on an upstream error-rate breach as the shared canary does. The sacred gate is always in front: only
  a version that passed it reaches this rule.

Error rates, simulated (``python -m bench.personal_canary_sim --runs 4000``: stable's true prefer
rate 0.3 with 6 labeled stable turns known before the canary, the candidate serving half of the
user's turns, the rule applied after every labeled turn; 4000 simulated users per row):

    candidate's true rate   0.1    0.2    0.3    0.4    0.6    0.8    0.9
    promoted                8.5%  23.5%  39.8%  54.9%  82.0%  95.5%  99.0%
    rolled back            86.7%  68.7%  52.4%  38.6%  15.7%   4.3%   1.1%
    rejected (undecided)    4.8%   7.7%   7.8%   6.5%   2.3%   0.1%   0.0%
    labeled turns to decide 8.2    9.2    9.3    9.3    8.3    7.0    6.5   (mean; median 6-7)

A candidate that fixes what the user complained about (0.8-0.9) is promoted for 95-99 % of users
after about 7 of their labeled turns (3-4 of them on the candidate). The price of deciding on so few
turns, with a look after every one of them, is the error at the margin: a candidate worse than stable
by the margin (0.2 against 0.3) is promoted for 23.5 % of users, one three times worse (0.1) for
8.5 % — for that user only; the user's next turns keep training candidates on top of it, each checked
against it in turn (an operator can roll it back with ``nextstate registry rollback --scope``).
An earlier form that rolled back on any two negative reactions promoted 9.8 % / 2.4 % there, but
threw away candidates still learning (a user no happier with stable than with the candidate) and
with them the training they carried. The margin and confidence are product defaults; nothing widens
them for a benchmark.

Why this shape: a Beta-Binomial posterior is exact at n = 3 where a normal approximation is not; the
margin keeps a version that is as good as stable from being stuck (the user taught it something the
rate cannot see yet), and the fast rollback bounds what a bad version costs one user to a couple of
turns — cheaper than waiting for significance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

Action = Literal["continue", "promote", "rollback", "reject"]
_GRID = 2000  # midpoint rule over [0, 1]: error below 1e-4 for the Beta shapes this sees (a, b <= ~50)


@dataclass(frozen=True)
class PersonalPolicy:
    prior_a: float = 1.0
    """Beta prior successes of each arm (1, 1 = uniform)."""
    prior_b: float = 1.0
    """Beta prior failures of each arm."""
    margin: float = 0.10
    """How much lower the candidate's success rate may be than stable's and still be promoted."""
    confidence: float = 0.90
    """Posterior probability the promotion (or clearly-worse rollback) claim needs."""
    min_labeled: int = 3
    """Labeled candidate turns before any promotion."""
    rollback_run: int = 2
    """This many newest candidate turns all failures = the user's reactions turned negative."""
    max_labeled: int = 12
    """Labeled candidate turns after which an undecided canary is rejected."""
    deadline_seconds: float = 7 * 24 * 3600.0
    """Time after which an undecided canary is rejected."""
    max_error_rate: float = 0.05
    health_min_requests: int = 20
    fraction: float = 0.5
    """Share of the user's conversations the candidate serves."""
    stable_window: int = 20
    """The user's newest labeled stable turns that are stable's evidence."""


@dataclass(frozen=True)
class Evidence:
    """One personal canary's labeled turns: +1 success, -1 failure, oldest first."""

    canary: tuple[int, ...]
    stable: tuple[int, ...]
    requests: int = 0
    """Upstream calls the candidate served (for the error-rate bound)."""
    errors: int = 0


@dataclass(frozen=True)
class PersonalDecision:
    action: Action
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _log_beta_pdf(x: float, a: float, b: float) -> float:
    return (a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))


@lru_cache(maxsize=256)
def _beta_cdf_table(a: float, b: float) -> tuple[float, ...]:
    """CDF of Beta(a, b) at the grid's cell edges 0, 1/N, ..., 1 (midpoint rule, normalised)."""
    h = 1.0 / _GRID
    masses = [math.exp(_log_beta_pdf((i + 0.5) * h, a, b)) * h for i in range(_GRID)]
    total = sum(masses)
    cdf, running = [0.0], 0.0
    for mass in masses:
        running += mass
        cdf.append(running / total)
    return tuple(cdf)


@lru_cache(maxsize=4096)  # counts are small integers: the same posteriors recur turn after turn
def prob_not_worse(a_c: float, b_c: float, a_s: float, b_s: float, margin: float) -> float:
    """P(p_c > p_s - margin) for independent p_c ~ Beta(a_c, b_c), p_s ~ Beta(a_s, b_s)."""
    h = 1.0 / _GRID
    cdf_s = _beta_cdf_table(a_s, b_s)
    shift = margin / h
    total = weight = 0.0
    for i in range(_GRID):
        x = (i + 0.5) * h
        density = math.exp(_log_beta_pdf(x, a_c, b_c)) * h
        position = min(float(_GRID), max(0.0, x / h + shift))  # F_s(x + margin), interpolated on the grid
        low = int(position)
        f_s = cdf_s[low] if low >= _GRID else cdf_s[low] + (position - low) * (cdf_s[low + 1] - cdf_s[low])
        total += density * f_s
        weight += density
    return total / weight


def decide(evidence: Evidence, policy: PersonalPolicy, age_seconds: float) -> PersonalDecision:
    """What to do with a personal canary given the user's labeled turns on each arm (pure)."""
    canary, stable = evidence.canary, evidence.stable[-policy.stable_window:]
    wins_c, wins_s = sum(r > 0 for r in canary), sum(r > 0 for r in stable)
    a_c, b_c = policy.prior_a + wins_c, policy.prior_b + len(canary) - wins_c
    a_s, b_s = policy.prior_a + wins_s, policy.prior_b + len(stable) - wins_s
    not_worse = prob_not_worse(a_c, b_c, a_s, b_s, policy.margin)
    clearly_worse = 1.0 - prob_not_worse(a_c, b_c, a_s, b_s, -policy.margin)  # P(p_c < p_s - margin)
    stats = {"canary": {"labeled": len(canary), "prefer": wins_c}, "stable": {"labeled": len(stable), "prefer": wins_s},
             "p_not_worse": round(not_worse, 4), "p_clearly_worse": round(clearly_worse, 4), "margin": policy.margin,
             "confidence": policy.confidence, "prior": [policy.prior_a, policy.prior_b]}
    if evidence.requests >= policy.health_min_requests and evidence.errors / evidence.requests > policy.max_error_rate:
        return PersonalDecision("rollback", f"error rate {evidence.errors / evidence.requests:.1%} above "
                                f"{policy.max_error_rate:.0%}", stats)
    run = canary[-policy.rollback_run:]
    if len(run) == policy.rollback_run and all(r < 0 for r in run) and not_worse < 0.5:
        return PersonalDecision("rollback", f"the user's last {policy.rollback_run} reactions to it were negative", stats)
    if clearly_worse >= policy.confidence:
        return PersonalDecision("rollback", f"worse than stable by more than {policy.margin:.2f} with "
                                f"P={clearly_worse:.2f}", stats)
    if len(canary) >= policy.min_labeled and canary[-1] > 0 and not_worse >= policy.confidence:
        return PersonalDecision("promote", f"not worse than stable by more than {policy.margin:.2f} with "
                                f"P={not_worse:.2f} over {len(canary)} labeled turns", stats)
    if len(canary) >= policy.max_labeled or age_seconds >= policy.deadline_seconds:
        return PersonalDecision("reject", f"inconclusive after {len(canary)} labeled turns", stats)
    return PersonalDecision("continue", "collecting the user's turns", stats)
