"""The gate's decision: numbers in (sacred scores, replay deltas, drift), verdict out. Pure.

A candidate fails when (a) on any sacred case its pass rate is below stable's by more than the
tolerance; (b) on held-out labeled samples it lowers the mean per-token log-likelihood of prefer
responses, or raises that of avoid responses, relative to stable (beyond the replay tolerance; a class
with fewer than ``replay_min_samples`` held-out samples is reported, not judged); (c) its mean
per-token KL(candidate ‖ stable) on the anchor prompts exceeds the bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.records import GateVerdict


@dataclass(frozen=True)
class GateThresholds:
    sacred_tolerance: float = 0.25
    """allowed drop of a case's pass rate (sampled answers are noisy)"""
    replay_tolerance: float = 0.0
    """allowed wrong-way move of the mean per-token log-likelihood (nats)"""
    replay_min_samples: int = 4
    """held-out samples a class needs before it is judged"""
    max_kl: float = 0.5
    """bound on mean per-token KL(candidate || stable) on anchors (nats)"""


@dataclass(frozen=True)
class CaseScore:
    case_id: str
    candidate: float
    stable: float


@dataclass(frozen=True)
class ReplayStats:
    prefer_n: int = 0
    prefer_delta: float = 0.0
    """mean over prefer samples of (candidate - stable) mean per-token log-likelihood"""
    avoid_n: int = 0
    avoid_delta: float = 0.0


def gate_verdict(cases: list[CaseScore], replay: ReplayStats, kl: float | None, thresholds: GateThresholds,
                 compared_to: str | None) -> GateVerdict:
    reasons: list[str] = []
    for case in cases:
        if case.candidate < case.stable - thresholds.sacred_tolerance:
            reasons.append(f"sacred case {case.case_id}: {case.candidate:.2f} < stable {case.stable:.2f} "
                           f"- {thresholds.sacred_tolerance}")
    notes: list[str] = []
    if replay.prefer_n >= thresholds.replay_min_samples:
        if replay.prefer_delta < -thresholds.replay_tolerance:
            reasons.append(f"replay: prefer log-likelihood fell by {-replay.prefer_delta:.4f} over {replay.prefer_n} samples")
    else:
        notes.append(f"replay: {replay.prefer_n} held-out prefer samples, not judged")
    if replay.avoid_n >= thresholds.replay_min_samples:
        if replay.avoid_delta > thresholds.replay_tolerance:
            reasons.append(f"replay: avoid log-likelihood rose by {replay.avoid_delta:.4f} over {replay.avoid_n} samples")
    else:
        notes.append(f"replay: {replay.avoid_n} held-out avoid samples, not judged")
    if kl is not None and kl > thresholds.max_kl:
        reasons.append(f"drift: KL(candidate||stable) {kl:.4f} > {thresholds.max_kl}")
    metrics = {
        "sacred": {c.case_id: {"candidate": c.candidate, "stable": c.stable} for c in cases},
        "sacred_mean": {"candidate": _mean([c.candidate for c in cases]), "stable": _mean([c.stable for c in cases])},
        "replay": {"prefer_n": replay.prefer_n, "prefer_delta": replay.prefer_delta,
                   "avoid_n": replay.avoid_n, "avoid_delta": replay.avoid_delta},
        "kl": kl, "thresholds": thresholds.__dict__, "notes": notes,
    }
    return GateVerdict(passed=not reasons, reasons=reasons, metrics=metrics, compared_to=compared_to)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
