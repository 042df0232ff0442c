"""The gate's decision: numbers in (sacred scores, replay deltas, drift), verdict out. Pure.

A candidate fails when (a) on any sacred case its pass rate is below stable's — or, where stable is an
adapter, the base model's: each step of a lineage may lose a little within the tolerance, and the steps
add up — by more than the tolerance and, when the number of sampled answers is known, the drop is significant (one-sided Fisher
exact test at ``sacred_alpha``: a few sampled answers differ by chance, and a gate that fails on chance
stops learning without protecting anything); or pooled over all cases the candidate passes less often
by more than ``suite_tolerance``, significantly (a broad small regression no single case shows); (b) on held-out labeled samples it lowers the mean per-token log-likelihood of prefer
responses, or raises that of avoid responses, relative to stable (beyond the replay tolerance and, when its standard error is known,
beyond what chance explains at ``sacred_alpha``, one-sided; a class with fewer than
``replay_min_samples`` held-out samples is reported, not judged); (c) its mean
per-token KL(candidate ‖ stable) on the anchor prompts exceeds the bound; (d) its answers show collapse
on real text next to stable's (repetition, answers alike across prompts, empty or looping answers, stable's
anchor answers losing likelihood: ``registry.collapse``); (e) it no longer says what the scope's users accepted
(``registry.recall``: the share of their undisputed answers whose key word it still says falls below stable's,
judged like a sacred case; fewer than ``recall_min_requests`` such requests are reported, not judged).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from registry.collapse import CollapseBounds, TextStats, collapse_reasons
from registry.recall import RecallScore
from registry.records import GateVerdict


@dataclass(frozen=True)
class GateThresholds:
    sacred_tolerance: float = 0.25
    """allowed drop of a case's pass rate (sampled answers are noisy)"""
    sacred_alpha: float = 0.05
    """a drop beyond the tolerance fails only when this unlikely by chance (one-sided Fisher exact test)"""
    suite_tolerance: float = 0.05
    """allowed drop of the pass rate pooled over all cases (also subject to ``sacred_alpha``)"""
    replay_tolerance: float = 0.0
    """allowed wrong-way move of the mean per-token log-likelihood (nats)"""
    replay_min_samples: int = 4
    """held-out samples a class needs before it is judged"""
    max_kl: float = 0.5
    """bound on mean per-token KL(candidate || stable) on anchors (nats)"""
    collapse: CollapseBounds = field(default_factory=CollapseBounds)
    """bounds on collapse of the candidate's text next to stable's"""
    recall_min_requests: int = 6
    """requests with a key word the recall of the scope's answers needs before it is judged"""


@dataclass(frozen=True)
class CaseScore:
    case_id: str
    candidate: float
    stable: float
    samples: int = 0
    """sampled answers per side (0 = unknown: the tolerance alone decides)"""
    base: float | None = None
    """the base model's pass rate where stable is an adapter (None: stable is the base model, or not measured)"""

    def passes(self, rate: float) -> int:
        return round(rate * self.samples)


def drop_p_value(candidate_passes: int, candidate_n: int, stable_passes: int, stable_n: int) -> float:
    """One-sided Fisher exact test: P(candidate passes <= observed | both sides equally good, margins fixed)."""
    total, passes = candidate_n + stable_n, candidate_passes + stable_passes
    denominator = math.comb(total, candidate_n)
    low = max(0, passes - stable_n)
    return sum(math.comb(passes, k) * math.comb(total - passes, candidate_n - k)
               for k in range(low, candidate_passes + 1)) / denominator


def _significant(candidate_passes: int, candidate_n: int, stable_passes: int, stable_n: int, alpha: float) -> tuple[bool, float]:
    p = drop_p_value(candidate_passes, candidate_n, stable_passes, stable_n)
    return p < alpha, p


@dataclass(frozen=True)
class ReplayStats:
    prefer_n: int = 0
    prefer_delta: float = 0.0
    """mean over prefer samples of (candidate - stable) mean per-token log-likelihood"""
    avoid_n: int = 0
    avoid_delta: float = 0.0
    prefer_se: float = 0.0
    """standard error of ``prefer_delta`` (0 = unknown: the tolerance alone decides)"""
    avoid_se: float = 0.0


def gate_verdict(cases: list[CaseScore], replay: ReplayStats, kl: float | None, thresholds: GateThresholds,
                 compared_to: str | None, text: tuple[TextStats, TextStats] | None = None,
                 anchor_logp_drop: float | None = None, recall: RecallScore | None = None) -> GateVerdict:
    """``text``: (candidate, stable) statistics of the sacred answers; ``anchor_logp_drop``: nats per token;
    ``recall``: the scope's accepted answers each side still says."""
    reasons: list[str] = []
    notes: list[str] = []
    for case in cases:
        _judge_case(case, f"sacred case {case.case_id}", thresholds, reasons, notes)
        if case.base is not None:  # what a lineage's steps lost together, each within the tolerance
            _judge_case(dataclasses.replace(case, stable=case.base), f"sacred case {case.case_id}", thresholds,
                        reasons, notes, reference="the base model")
    if recall is not None:
        if recall.requests >= thresholds.recall_min_requests:
            n = recall.answers
            _judge_case(CaseScore("recall", recall.candidate / n, recall.stable / n, n),
                        "recall of the scope's accepted answers", thresholds, reasons, notes)
        else:
            notes.append(f"recall: {recall.requests} requests with a key word, not judged")
    counted = [c for c in cases if c.samples > 0]
    if counted:
        _judge_suite(counted, [c.stable for c in counted], "stable", thresholds, reasons, notes)
        if all(c.base is not None for c in counted):
            _judge_suite(counted, [c.base or 0.0 for c in counted], "the base model", thresholds, reasons, notes)
    if replay.prefer_n >= thresholds.replay_min_samples:
        if replay.prefer_delta < -thresholds.replay_tolerance:
            message = f"replay: prefer log-likelihood fell by {-replay.prefer_delta:.4f} over {replay.prefer_n} samples"
            _judge_replay(-replay.prefer_delta, replay.prefer_se, thresholds.sacred_alpha, message, reasons, notes)
    else:
        notes.append(f"replay: {replay.prefer_n} held-out prefer samples, not judged")
    if replay.avoid_n >= thresholds.replay_min_samples:
        if replay.avoid_delta > thresholds.replay_tolerance:
            message = f"replay: avoid log-likelihood rose by {replay.avoid_delta:.4f} over {replay.avoid_n} samples"
            _judge_replay(replay.avoid_delta, replay.avoid_se, thresholds.sacred_alpha, message, reasons, notes)
    else:
        notes.append(f"replay: {replay.avoid_n} held-out avoid samples, not judged")
    if kl is not None and kl > thresholds.max_kl:
        reasons.append(f"drift: KL(candidate||stable) {kl:.4f} > {thresholds.max_kl}")
    empty = TextStats(0, 0.0, 0.0, 0.0, 0.0)
    candidate_text, stable_text = text or (empty, empty)
    reasons += collapse_reasons(candidate_text, stable_text, anchor_logp_drop, thresholds.collapse)
    metrics = {
        "sacred": {c.case_id: {"candidate": c.candidate, "stable": c.stable,
                               **({"base": c.base} if c.base is not None else {})} for c in cases},
        "sacred_mean": {"candidate": _mean([c.candidate for c in cases]), "stable": _mean([c.stable for c in cases])},
        "replay": {"prefer_n": replay.prefer_n, "prefer_delta": replay.prefer_delta, "prefer_se": replay.prefer_se,
                   "avoid_n": replay.avoid_n, "avoid_delta": replay.avoid_delta, "avoid_se": replay.avoid_se},
        "kl": kl, "anchor_logp_drop": anchor_logp_drop,
        "recall": dataclasses.asdict(recall) if recall is not None else None,
        "text": {"candidate": dataclasses.asdict(candidate_text), "stable": dataclasses.asdict(stable_text)},
        "thresholds": dataclasses.asdict(thresholds), "notes": notes,
    }
    return GateVerdict(passed=not reasons, reasons=reasons, metrics=metrics, compared_to=compared_to)


def _judge_suite(counted: list[CaseScore], reference: list[float], name: str, thresholds: GateThresholds,
                 reasons: list[str], notes: list[str]) -> None:
    """The pass rate pooled over the cases below the reference's by more than the suite tolerance fails,
    unless chance explains it (Fisher)."""
    n = sum(c.samples for c in counted)
    cand = sum(c.passes(c.candidate) for c in counted)
    ref = sum(c.passes(rate) for c, rate in zip(counted, reference, strict=True))
    if cand / n >= ref / n - thresholds.suite_tolerance:
        return
    significant, p = _significant(cand, n, ref, n, thresholds.sacred_alpha)
    message = f"sacred suite: {cand}/{n} answers pass < {name} {ref}/{n} - {thresholds.suite_tolerance} (p={p:.3f})"
    if significant:
        reasons.append(message)
    else:
        notes.append(f"{message}, within chance")


def _judge_case(case: CaseScore, label: str, thresholds: GateThresholds, reasons: list[str], notes: list[str],
                reference: str = "stable") -> None:
    """A pass rate below the reference's (stable's) by more than the tolerance fails, unless chance explains it
    (Fisher)."""
    if case.candidate >= case.stable - thresholds.sacred_tolerance:
        return
    message = f"{label}: {case.candidate:.2f} < {reference} {case.stable:.2f} - {thresholds.sacred_tolerance}"
    if case.samples <= 0:
        reasons.append(message)
        return
    n = case.samples
    significant, p = _significant(case.passes(case.candidate), n, case.passes(case.stable), n, thresholds.sacred_alpha)
    if significant:
        reasons.append(f"{message} (p={p:.3f} over {n} answers each)")
    else:
        notes.append(f"{message}, within chance (p={p:.3f} over {n} answers each)")


def _judge_replay(wrong_way: float, se: float, alpha: float, message: str, reasons: list[str], notes: list[str]) -> None:
    """A wrong-way move fails unless its standard error says chance explains it (one-sided z-test)."""
    if se <= 0:
        reasons.append(message)
        return
    z = wrong_way / se
    p = 0.5 * math.erfc(z / math.sqrt(2))
    if p < alpha:
        reasons.append(f"{message} (p={p:.3f})")
    else:
        notes.append(f"{message}, within chance (p={p:.3f})")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
