"""The canary decision: a pure function from live counts to promote / roll back / reject / step / wait.

The test. Each arm's prefer rate (prefer / (prefer + avoid) over labeled turns it served) gets an
anytime-valid confidence sequence: the two-sided normal-mixture boundary for a 1/2-sub-Gaussian mean
(Robbins; Howard et al. 2021), ``|S_n - n p| < sqrt((V + rho) ln((V + rho) / (rho a^2)))`` with
``V = n / 4``, which holds for all ``n`` at once with probability >= 1 - a. Each arm uses a = alpha / 2,
so by a union bound the interval of the difference ``d = p_canary - p_stable``,
``[lo_c - hi_s, hi_c - lo_s]``, covers ``d`` at every check with probability >= 1 - alpha. Because the
coverage is uniform over time, checking after every new label (optional stopping) keeps the 95%.
It is conservative (the union bound and the sub-Gaussian proxy), which costs samples, never errors.

The rules, in order: an error-rate or p99-latency breach rolls back; ``hi < 0`` (worse with confidence
1 - alpha) rolls back; at the last step of the schedule, with at least ``min_samples`` labeled canary
turns, ``lo > -margin`` (not worse by more than the margin) promotes; past the deadline, reject as
inconclusive; otherwise step the fraction up once the current step has ``step_samples`` more labeled
canary turns and ``step_seconds`` have passed; otherwise wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["continue", "step", "promote", "rollback", "reject"]


@dataclass(frozen=True)
class ArmCounts:
    prefer: int = 0
    """labeled turns of this arm classed prefer"""
    avoid: int = 0
    """labeled turns of this arm classed avoid"""

    @property
    def n(self) -> int:
        return self.prefer + self.avoid

    @property
    def rate(self) -> float | None:
        return self.prefer / self.n if self.n else None


@dataclass(frozen=True)
class Health:
    requests: int = 0
    """upstream requests the canary version served"""
    errors: int = 0
    """of which failed upstream"""
    p99_ms: float | None = None
    """p99 latency of its turns"""
    turns: int = 0
    """turns the p99 was computed over"""

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class CanaryPolicy:
    steps: tuple[float, ...] = (0.05, 0.25, 0.5)
    step_samples: int = 30
    step_seconds: float = 0.0
    min_samples: int = 50
    margin: float = 0.1
    alpha: float = 0.05
    deadline_seconds: float = 86400.0
    max_error_rate: float = 0.05
    max_p99_ms: float = 30000.0
    health_min_requests: int = 20
    rho: float = 5.0
    """mixture width of the confidence sequence (in units of V = n/4): tightest near V ~ rho"""


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fraction: float | None = None
    """the new fraction when action is "step\""""


def radius(n: int, alpha: float, rho: float) -> float:
    """Half-width of the anytime-valid interval of a mean of ``n`` values in [0, 1] (1.0 when n = 0)."""
    if n <= 0:
        return 1.0
    v = n / 4.0
    return min(1.0, math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha * alpha))) / n)


def difference_interval(canary: ArmCounts, stable: ArmCounts, alpha: float, rho: float) -> tuple[float, float]:
    """Confidence interval of ``p_canary - p_stable`` at level ``1 - alpha``, valid at every check."""
    if canary.n == 0 or stable.n == 0:
        return (-1.0, 1.0)
    rc, rs = radius(canary.n, alpha / 2, rho), radius(stable.n, alpha / 2, rho)
    d = float(canary.rate) - float(stable.rate)  # type: ignore[arg-type]
    return (max(-1.0, d - rc - rs), min(1.0, d + rc + rs))


def p99(values: list[float]) -> float | None:
    """Nearest-rank 99th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def decide(canary: ArmCounts, stable: ArmCounts, health: Health, step: int, elapsed: float,
           step_elapsed: float, policy: CanaryPolicy) -> Decision:
    """What to do now with the canary at schedule index ``step`` (pure: numbers in, decision out)."""
    lo, hi = difference_interval(canary, stable, policy.alpha, policy.rho)
    evidence: dict[str, Any] = {
        "canary": {"prefer": canary.prefer, "avoid": canary.avoid, "rate": canary.rate},
        "stable": {"prefer": stable.prefer, "avoid": stable.avoid, "rate": stable.rate},
        "interval": [round(lo, 4), round(hi, 4)], "confidence": 1 - policy.alpha, "margin": policy.margin,
        "health": {"requests": health.requests, "errors": health.errors, "error_rate": health.error_rate,
                   "p99_ms": health.p99_ms},
        "step": step, "fraction": policy.steps[step], "elapsed_s": round(elapsed, 1),
    }
    if health.requests >= policy.health_min_requests and health.error_rate > policy.max_error_rate:
        return Decision("rollback", f"error rate {health.error_rate:.3f} > {policy.max_error_rate}", evidence)
    if health.turns >= policy.health_min_requests and health.p99_ms is not None and health.p99_ms > policy.max_p99_ms:
        return Decision("rollback", f"p99 latency {health.p99_ms:.0f} ms > {policy.max_p99_ms:.0f} ms", evidence)
    if hi < 0:
        return Decision("rollback", f"canary worse than stable: difference <= {hi:.3f} at {1 - policy.alpha:.0%}", evidence)
    last = step >= len(policy.steps) - 1
    if last and canary.n >= policy.min_samples and lo > -policy.margin:
        return Decision("promote", f"not worse than stable by {policy.margin}: difference >= {lo:.3f} "
                                   f"at {1 - policy.alpha:.0%}", evidence)
    if elapsed >= policy.deadline_seconds:
        return Decision("reject", f"inconclusive at the deadline: interval [{lo:.3f}, {hi:.3f}]", evidence)
    if not last and canary.n >= policy.step_samples * (step + 1) and step_elapsed >= policy.step_seconds:
        nxt = policy.steps[step + 1]
        return Decision("step", f"no regression at {policy.steps[step]:.0%}: step to {nxt:.0%}", evidence, nxt)
    return Decision("continue", "collecting evidence", evidence)
