"""The canary of a personal learning scope: promote or roll back on one user's own next turns (pure).

A personal scope has one user, so the statistical canary of the shared scope (``registry.canary``:
tens of labeled turns per arm) would never finish. Here the evidence is that user's labeled turns:
the candidate serves the user's conversations (``fraction``, 1.0: all of them, sticky per
conversation), and each labeled turn is a success (``prefer``) or a failure (``avoid``) of the
version that served it.

The rule (``decide``), with the numbers of ``PersonalPolicy``'s defaults:

- Prior: each arm's success rate ``p`` is Beta(1, 1) (uniform: no opinion before the user speaks).
  The stable arm's evidence is the user's recent labeled turns on stable (``stable_window``, 20), the
  turns before the canary started included — the dissatisfaction the candidate was trained on. With
  the whole of the user's traffic on the candidate they are all of it: one user's turns before and
  after are the comparison (a shared-scope canary would need both arms at once; one person's requests
  over a few minutes do not drift the way a population's do).
- Inherited turns (a power prior): the learner trains each candidate on top of the running canary, and
  the newest such version replaces an undecided canary at once (``registry.controller``); it carries
  the canary's labeled turns, and those the canary carried, each at weight ``inherit_weight`` (0.5) —
  evidence about the version it was trained from, discounted because it is not the same version.
- Promote when the candidate has at least one labeled turn of its own, the newest of them not a
  failure, at least ``min_labeled`` (3) labeled turns counting the inherited ones at their weight,
  and ``P(p_canary > p_stable - margin) >= confidence`` under the posteriors (margin 0.10,
  confidence 0.90): not worse than stable beyond the margin, with that confidence.
- Roll back at once when the user's reactions to it turn negative: its ``rollback_run`` (3) newest
  labeled turns are all failures and it is more likely worse than stable beyond the margin than not
  (``P(p_canary > p_stable - margin) < 0.5``), or it is clearly worse (``P(p_canary <= p_stable -
  margin) >= confidence``, with a turn of its own). Three, not two: a user corrects a wrong fact
  whatever the style, so two failures in a row are common for a candidate that learned the style —
  and a rollback discards the training the lineage carries.
- Reject when ``max_labeled`` (12) labeled turns, the inherited ones counted at their weight, or the
  deadline pass without a decision (counting inherited turns whole rejected a chain of replacements
  whose evidence was one turn short: 2 of its own, both good, and 11 inherited) — unless its own turns
  alone pass the promotion test (at least ``min_labeled``, the newest good), which promotes it: the
  inherited turns are there to speed a decision up, not to overrule the version's own (a run's canary
  with 6 good turns of 6 was rejected at P = 0.84, held back by 13 inherited turns of older versions,
  7 of them good; its own gave P = 0.96), or unless the verdict
  is inconclusive because stable's side is thin: with fewer than ``stable_min`` (6) labeled stable
  turns the canary first shares the user's conversations with stable (``share_fraction``, 0.5: half
  go to stable) and is rejected only at twice the limit. A user whose first 4 turns happened to please
  (3 of 4) cannot make any candidate look better however many turns it gets: that chain, 4 of its own
  5 turns good and 8 of 14 inherited, was rejected at P = 0.62, and the next candidate began again
  from stable. Simulated with 4 stable turns known (stable 0.3, 2000 users per cell, at most 60 turns):
  a 0.8-candidate is promoted for 94.8 % of users instead of 91.2 %, a 0.6 one for 75.7 % instead of
  70.3 %, while a 0.2 one is promoted for 18.3 % instead of 17.8 % and a 0.1 one for 5.9 % instead of
  5.8 % (rolled back more: 67.5 / 80.1 % instead of 64.7 / 74.0 %). With 6 or more known, as in the
  tables below, nothing changes. Roll back on an upstream error-rate breach as the shared canary does.
  The sacred gate is always in front: only a version that passed it reaches this rule.

Error rates, simulated (``python -m bench.personal_canary_sim --runs 4000``: stable's true prefer
rate 0.3 with 6 labeled stable turns known before the canary, the candidate serving every turn, the
rule applied after every labeled turn; 4000 simulated users per row; second table: ``--supersede-every
4``, a newer version of the same rate replacing the undecided canary every 4 labeled turns; third:
``--supersede-every 4 --step 0.2``, each newer version 0.2 better than the one it replaces, the rows
naming the first version's rate):

    candidate's true rate   0.1    0.2    0.3    0.4    0.6    0.8    0.9
    promoted                7.7%  18.4%  30.3%  45.2%  75.8%  95.1%  99.2%
    rolled back            74.6%  60.7%  46.3%  32.9%   9.3%   0.9%   0.1%
    rejected (undecided)   17.8%  21.0%  23.4%  21.9%  14.9%   4.0%   0.7%
    labeled turns to decide 5.6    6.2    6.6    6.6    5.7    4.2    3.6   (mean)

    superseded every 4:
    promoted               11.3%  24.3%  39.3%  54.7%  82.5%  97.5%  99.5%
    rolled back            77.7%  62.3%  48.0%  33.3%   9.2%   0.8%   0.2%

    superseded every 4, each 0.2 better:
    promoted               41.5%  57.4%  71.0%  82.3%  94.8%  99.5%  99.8%
    rolled back            57.4%  42.5%  28.9%  17.6%   4.9%   0.5%   0.1%

Before the promotion on its own turns at the limit, the chains were promoted for 10.8 / 22.9 / 37.8 /
52.8 / 81.3 / 97.2 / 99.4 % and, improving, 39.9 / 54.8 / 68.7 / 80.6 / 94.7 / 99.5 / 99.8 %: about one
point more at and below the margin, two more for a chain that learns.

A candidate that fixes what the user complained about (0.8-0.9) is promoted for 95-99 % of users
after about 4 of their labeled turns. The price of deciding on so few turns, with a look after every
one of them, is the error at the margin: a candidate worse than stable by the margin (0.2 against 0.3)
is promoted for 18 % of users (24 % in a chain of replacements, which pools turns of related
versions), one three times worse (0.1) for 8-11 % — for that user only; the user's next turns keep
training candidates on top of it, each checked against it in turn (an operator can roll it back with
``nextstate registry rollback --scope``). Two negative turns in a row instead of three promote as
often but roll back 17 % of 0.6-candidates instead of 9 %, 5 % of 0.8-candidates instead of 1 %.
The margin and confidence are product defaults; nothing widens them for a benchmark.

Why this shape: a Beta-Binomial posterior is exact at n = 3 where a normal approximation is not; the
margin keeps a version that is as good as stable from being stuck (the user taught it something the
rate cannot see yet); the candidate serves all of the user's turns because one user has few, and
half of them spent on the stable the user already complained about halves the speed of every
decision; inheriting at half weight lets continuous training replace the canary without starting its
evidence over each time, and the run of failures bounds what a bad version costs one user to a few
turns — cheaper than waiting for significance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

Action = Literal["continue", "promote", "rollback", "reject", "share"]
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
    rollback_run: int = 3
    """This many newest candidate turns all failures = the user's reactions turned negative."""
    max_labeled: int = 12
    """Labeled candidate turns after which an undecided canary is rejected."""
    deadline_seconds: float = 7 * 24 * 3600.0
    """Time after which an undecided canary is rejected."""
    max_error_rate: float = 0.05
    health_min_requests: int = 20
    fraction: float = 1.0
    """Share of the user's conversations the candidate serves (stable's evidence: the user's turns before it)."""
    inherit_weight: float = 0.5
    """Weight of each inherited turn (a power prior): the turns of the canaries this one replaced."""
    stable_window: int = 20
    """The user's newest labeled stable turns that are stable's evidence."""
    stable_min: int = 6
    """Labeled stable turns a verdict of "inconclusive" needs: with fewer, the canary shares the user's
    conversations with stable (``share_fraction``) instead of being rejected."""
    share_fraction: float = 0.5
    """Share of the user's conversations the candidate keeps while stable's evidence is gathered."""


@dataclass(frozen=True)
class Evidence:
    """One personal canary's labeled turns: +1 success, -1 failure, oldest first."""

    canary: tuple[int, ...]
    stable: tuple[int, ...]
    inherited: tuple[int, ...] = ()
    """Labeled turns of the canaries this one replaced since stable (it was trained on top of them)."""
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


def _own_not_worse(own: tuple[int, ...], a_s: float, b_s: float, policy: PersonalPolicy) -> float:
    """The promotion probability on the canary's own turns alone (0 below ``min_labeled`` of them)."""
    if len(own) < policy.min_labeled:
        return 0.0
    wins = sum(r > 0 for r in own)
    return prob_not_worse(policy.prior_a + wins, policy.prior_b + len(own) - wins, a_s, b_s, policy.margin)


def decide(evidence: Evidence, policy: PersonalPolicy, age_seconds: float) -> PersonalDecision:
    """What to do with a personal canary given the user's labeled turns on each arm (pure)."""
    own, inherited, stable = evidence.canary, evidence.inherited, evidence.stable[-policy.stable_window:]
    w = policy.inherit_weight
    wins_c = sum(r > 0 for r in own) + w * sum(r > 0 for r in inherited)
    n_c = len(own) + w * len(inherited)
    wins_s = sum(r > 0 for r in stable)
    a_c, b_c = policy.prior_a + wins_c, policy.prior_b + n_c - wins_c
    a_s, b_s = policy.prior_a + wins_s, policy.prior_b + len(stable) - wins_s
    not_worse = prob_not_worse(a_c, b_c, a_s, b_s, policy.margin)
    clearly_worse = 1.0 - not_worse  # P(p_c <= p_s - margin)
    stats = {"canary": {"labeled": len(own), "prefer": sum(r > 0 for r in own)},
             "inherited": {"labeled": len(inherited), "prefer": sum(r > 0 for r in inherited), "weight": w},
             "stable": {"labeled": len(stable), "prefer": wins_s},
             "p_not_worse": round(not_worse, 4), "p_clearly_worse": round(clearly_worse, 4), "margin": policy.margin,
             "confidence": policy.confidence, "prior": [policy.prior_a, policy.prior_b]}
    if evidence.requests >= policy.health_min_requests and evidence.errors / evidence.requests > policy.max_error_rate:
        return PersonalDecision("rollback", f"error rate {evidence.errors / evidence.requests:.1%} above "
                                f"{policy.max_error_rate:.0%}", stats)
    run = own[-policy.rollback_run:]
    if len(run) == policy.rollback_run and all(r < 0 for r in run) and not_worse < 0.5:
        return PersonalDecision("rollback", f"the user's last {policy.rollback_run} reactions to it were negative", stats)
    if own and clearly_worse >= policy.confidence:
        return PersonalDecision("rollback", f"worse than stable by more than {policy.margin:.2f} with "
                                f"P={clearly_worse:.2f}", stats)
    if own and own[-1] > 0 and n_c >= policy.min_labeled and not_worse >= policy.confidence:
        return PersonalDecision("promote", f"not worse than stable by more than {policy.margin:.2f} with "
                                f"P={not_worse:.2f} over {len(own)} labeled turns"
                                + (f" and {len(inherited)} inherited at weight {w:g}" if inherited else ""), stats)
    at_limit = n_c >= policy.max_labeled or age_seconds >= policy.deadline_seconds
    own_not_worse = _own_not_worse(own, a_s, b_s, policy) if at_limit and inherited and own and own[-1] > 0 else 0.0
    if own_not_worse >= policy.confidence:  # inherited turns speed a decision up, never overrule its own
        return PersonalDecision("promote", f"its own {len(own)} labeled turns alone are not worse than stable by more "
                                f"than {policy.margin:.2f} with P={own_not_worse:.2f} (the inherited turns of older "
                                "versions held it back)", {**stats, "p_own_not_worse": round(own_not_worse, 4)})
    if at_limit:
        if len(stable) < policy.stable_min and n_c < 2 * policy.max_labeled and age_seconds < policy.deadline_seconds:
            return PersonalDecision("share", f"inconclusive with {len(stable)} labeled stable turns: stable serves "
                                    f"{1 - policy.share_fraction:.0%} of the user's conversations until it has "
                                    f"{policy.stable_min}", stats)
        return PersonalDecision("reject", f"inconclusive after {len(own)} labeled turns"
                                + (f" and {len(inherited)} inherited at weight {w:g}" if inherited else ""), stats)
    return PersonalDecision("continue", "collecting the user's turns", stats)
