"""Does a new stable ever serve the user worse than the stable before it? Each change of stable, judged on the
evaluation's fresh prompts. Pure: points in, steps and lines out.

Every checkpoint of a run asks the same fresh prompts with the same sampling seeds, so two checkpoints are a
paired comparison: where the stable changed between them, the prompts answered well before and not after
(``worse``) against those answered well only after (``better``) are what changed. A drop is **beyond noise**
when an exact one-sided sign test over those discordant prompts says so (``P(X >= worse)`` for ``X`` ~
Binomial(worse + better, 1/2) below ``ALPHA``): the prompts on which the two versions agree say nothing about
which is better. Checkpoints recorded without per-prompt outcomes are not tested (``p_value`` NaN).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05
"""The level at which a drop counts as beyond noise."""


@dataclass(frozen=True)
class StableStep:
    """One change of stable between two checkpoints of a run, on one measure (the preference or the facts)."""

    run: str
    """``method/persona/seed``."""
    interactions: int
    """The checkpoint at which the new stable was first evaluated."""
    before: str
    after: str
    measure: str
    """``satisfaction`` (the persona's preference) or ``facts``."""
    share_before: float
    share_after: float
    p_value: float
    """One-sided: how likely a drop this large between two equally good versions is."""

    @property
    def change(self) -> float:
        return self.share_after - self.share_before

    @property
    def beyond_noise(self) -> bool:
        return self.change < 0 and self.p_value < ALPHA  # False for NaN: not tested


def sign_test_p(worse: int, better: int) -> float:
    """One-sided exact sign test: ``P(X >= worse)`` for ``X`` ~ Binomial(worse + better, 1/2); 1.0 with no pair."""
    n = worse + better
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n


def _p_value(before: Mapping[str, Any], after: Mapping[str, Any], outcomes: str) -> float:
    """The sign test over the two checkpoints' per-prompt outcomes; NaN where they were not recorded."""
    a, b = before.get(outcomes), after.get(outcomes)
    if not (isinstance(a, Sequence) and isinstance(b, Sequence) and len(a) == len(b) and a):
        return math.nan
    worse = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    better = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return sign_test_p(worse, better)


MEASURES = (("satisfaction", "satisfaction", "satisfied"), ("facts", "fact_accuracy", "facts_ok"))


def stable_steps(points: Iterable[Mapping[str, Any]]) -> list[StableStep]:
    """Every change of stable between consecutive checkpoints of each run, on each measure."""
    runs: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for point in points:
        runs.setdefault((str(point["method"]), str(point["persona"]), int(point["seed"])), []).append(point)
    steps = []
    for (method, persona, seed), run in sorted(runs.items()):
        run.sort(key=lambda p: int(p["interactions"]))
        for before, after in itertools.pairwise(run):
            if before.get("stable") == after.get("stable"):
                continue
            for measure, share, outcomes in MEASURES:
                steps.append(StableStep(f"{method}/{persona}/s{seed}", int(after["interactions"]),
                                        str(before.get("stable") or "base"), str(after.get("stable") or "base"), measure,
                                        float(before[share]), float(after[share]), _p_value(before, after, outcomes)))
    return steps


def stable_step_lines(points: Iterable[Mapping[str, Any]]) -> list[str]:
    """Per measure: how many changes of stable, how many dropped, and which dropped beyond noise."""
    steps = [s for s in stable_steps(points) if not s.run.startswith("none/")]
    lines = []
    for measure, _, _ in MEASURES:
        mine = [s for s in steps if s.measure == measure]
        if not mine:
            continue
        drops = [s for s in mine if s.change < 0]
        beyond = [s for s in drops if s.beyond_noise]
        worst = min(mine, key=lambda s: s.change)
        lines.append(f"stable changes ({measure}): {len(mine)}; lower than the stable before: {len(drops)}; "
                     f"beyond noise (p < {ALPHA:g}): {len(beyond)}; largest change down: "
                     + (f"{worst.change:+.2f} ({worst.run} @{worst.interactions}, {worst.before} -> {worst.after}, "
                        f"p = {worst.p_value:.2f})" if worst.change < 0 else "none"))
        lines += [f"  beyond noise: {s.run} @{s.interactions} {s.before} -> {s.after}: {s.share_before:.2f} -> "
                  f"{s.share_after:.2f} (p = {s.p_value:.3f})" for s in beyond]
    return lines
