"""Aggregating PrefBench points: curves over seeds, interactions-to-threshold, table, plot, sparkline.

A *point* is one evaluation: ``{"method", "persona", "seed", "interactions", "satisfaction", ...}``.
Pure functions except ``plot``, which writes a PNG with matplotlib's Agg backend.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Point = dict[str, Any]
SPARKS = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class CurvePoint:
    interactions: int
    mean: float
    low: float
    high: float
    """``low``/``high``: the smallest and largest per-seed mean (the band over seeds)."""


def curve(points: Iterable[Point], method: str) -> list[CurvePoint]:
    """Satisfaction vs interactions for ``method``: per seed averaged over personas, then over seeds."""
    by_x_seed: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        if p["method"] == method:
            by_x_seed[int(p["interactions"])][int(p["seed"])].append(float(p["satisfaction"]))
    out = []
    for x in sorted(by_x_seed):
        seed_means = [statistics.fmean(v) for v in by_x_seed[x].values()]
        out.append(CurvePoint(x, statistics.fmean(seed_means), min(seed_means), max(seed_means)))
    return out


def interactions_to(points: Iterable[Point], method: str, threshold: float = 0.8) -> int | None:
    """The first checkpoint at which the mean satisfaction of ``method`` reaches ``threshold``."""
    for point in curve(points, method):
        if point.mean >= threshold - 1e-9:
            return point.interactions
    return None


def methods_in(points: Sequence[Point]) -> list[str]:
    order = ["none", "rl", "opd", "combined"]
    found = {p["method"] for p in points}
    return [m for m in order if m in found] + sorted(found - set(order))


def markdown_table(points: Sequence[Point], threshold: float = 0.8) -> str:
    """One row per method: mean satisfaction (min–max over seeds) at each checkpoint, and to-threshold."""
    methods = methods_in(points)
    xs = sorted({int(p["interactions"]) for p in points})
    head = ["method", *[f"@{x}" for x in xs], f"interactions to {threshold:g}"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        cells = {c.interactions: c for c in curve(points, method)}
        values = [f"{cells[x].mean:.2f} ({cells[x].low:.2f}–{cells[x].high:.2f})" if x in cells else "" for x in xs]
        reached = interactions_to(points, method, threshold)
        rows.append("| " + " | ".join([method, *values, str(reached) if reached is not None else "not reached"]) + " |")
    return "\n".join(rows)


def sparkline(values: Sequence[float], low: float = 0.0, high: float = 1.0) -> str:
    """``▁▃▆█``-style line of values in [low, high]."""
    span = (high - low) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, max(0, round((v - low) / span * (len(SPARKS) - 1))))] for v in values)


def plot(points: Sequence[Point], path: Path, title: str = "PrefBench", threshold: float = 0.8) -> Path:
    """PNG: one line per method (mean over seeds) with a band from the lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for method in methods_in(points):
        line = curve(points, method)
        xs = [c.interactions for c in line]
        ax.plot(xs, [c.mean for c in line], marker="o", label=method)
        ax.fill_between(xs, [c.low for c in line], [c.high for c in line], alpha=0.2)
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("interactions")
    ax.set_ylabel("satisfaction on fresh prompts (stable)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
