"""What the stack looks like from Redis: reward rates per version, canary arms, queues, streams, registry.

Shared by the dashboard's JSON endpoints and the Prometheus exporter. The math (rates, Wilson
intervals, time buckets, per-version series) is pure and tested on literal tables; the readers only
fetch and decode.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from labeler.records import HARD_QUEUE, LABEL_QUEUE, SAMPLES_STREAM, SampleRecord
from proxy.records import FEEDBACK_STREAM, ROUTING_KEY, TRANSITIONS_STREAM, TURNS_STREAM, RoutingTable
from registry.canary import ArmCounts, CanaryPolicy, difference_interval
from registry.records import (
    ALIASES_KEY,
    CANARY_KEY,
    EVENTS_STREAM,
    GLOBAL_SCOPE,
    SCOPES_KEY,
    VERSIONS_KEY,
    AuditEvent,
    CanaryState,
    VersionInfo,
    scope_keys,
)

STREAMS = (TURNS_STREAM, TRANSITIONS_STREAM, FEEDBACK_STREAM, SAMPLES_STREAM, EVENTS_STREAM)
QUEUES = (LABEL_QUEUE, HARD_QUEUE)
BASE = "base"  # label of turns served by the base model (no adapter)
# candidate bucket widths (seconds) for reward-rate series; the smallest giving <= MAX_BUCKETS wins
BUCKET_WIDTHS = (60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 48


# -- pure math ----------------------------------------------------------------------------------


def reward_rate(prefer: int, avoid: int) -> float | None:
    """Share of +1 among the samples with a non-zero reward; ``None`` when there is none."""
    total = prefer + avoid
    return prefer / total if total else None


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (95% for z=1.96); ``None`` for no trials."""
    if total <= 0:
        return None
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bucket_width(span_s: float) -> int:
    """The smallest width in ``BUCKET_WIDTHS`` that covers ``span_s`` in at most ``MAX_BUCKETS`` buckets."""
    for width in BUCKET_WIDTHS:
        if span_s / width <= MAX_BUCKETS:
            return width
    return BUCKET_WIDTHS[-1]


def version_label(version: str | None) -> str:
    """``"v3"`` for ``"v3"`` and for a served name ``"<base>@v3"``; ``"base"`` for no version."""
    return version.rsplit("@", 1)[-1] if version else BASE


def version_of(sample: SampleRecord) -> str:
    return version_label(sample.serving_version)


def reward_series(samples: Sequence[SampleRecord], width: int | None = None) -> dict[str, Any]:
    """Reward rate per serving version per time bucket: ``{"width": s, "series": {version: [point]}}``.

    A point is ``{"t": bucket start (epoch s), "rate", "prefer", "avoid", "n"}``; buckets where a version
    has no prefer/avoid sample are left out (observations carry no reward).
    """
    rewarded = [s for s in samples if s.cls != "observation"]
    if not rewarded:
        return {"width": width or BUCKET_WIDTHS[0], "series": {}}
    times = [s.created_at for s in rewarded]
    width = width or bucket_width(max(times) - min(times))
    cells: dict[str, dict[int, list[int]]] = {}
    for sample in rewarded:
        start = int(sample.created_at // width * width)
        cell = cells.setdefault(version_of(sample), {}).setdefault(start, [0, 0])
        cell[0 if sample.cls == "prefer" else 1] += 1
    series = {
        version: [
            {"t": t, "rate": reward_rate(p, a), "prefer": p, "avoid": a, "n": p + a}
            for t, (p, a) in sorted(buckets.items())
        ]
        for version, buckets in sorted(cells.items())
    }
    return {"width": width, "series": series}


def arm_stats(samples: Iterable[SampleRecord], version: str | None, since: float = 0.0) -> dict[str, Any]:
    """Counts, reward rate and its 95% interval for one serving version (None = base) since a time."""
    label = version_label(version)
    counts = {"prefer": 0, "avoid": 0, "observation": 0}
    for sample in samples:
        if version_of(sample) == label and sample.created_at >= since:
            counts[sample.cls] += 1
    rated = counts["prefer"] + counts["avoid"]
    interval = wilson_interval(counts["prefer"], rated)
    return {
        "version": label, **counts, "n": rated, "rate": reward_rate(counts["prefer"], counts["avoid"]),
        "low": interval[0] if interval else None, "high": interval[1] if interval else None,
    }


def latest_per_turn(samples: Iterable[SampleRecord]) -> list[SampleRecord]:
    """The highest revision of each turn, in stream order of that revision."""
    latest: dict[str, SampleRecord] = {}
    for sample in samples:
        current = latest.get(sample.turn_id)
        if current is None or sample.revision >= current.revision:
            latest.pop(sample.turn_id, None)
            latest[sample.turn_id] = sample
    return list(latest.values())


def judge_latency_ms(sample: SampleRecord) -> float | None:
    """The judge's wall time for a sample, wherever the labeler recorded it."""
    if "judge_ms" in sample.timings:
        return float(sample.timings["judge_ms"])
    verdicts = getattr(sample, "verdicts", None) or {}
    verdict = verdicts.get(sample.source) if isinstance(verdicts, dict) else None
    if isinstance(verdict, dict):
        timings = verdict.get("timings") or {}
        value = timings.get("judge_ms", verdict.get("judge_ms"))
        if isinstance(value, int | float):
            return float(value)
    return None


# -- readers ------------------------------------------------------------------------------------


def as_text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def recent_samples(client: redis.Redis, count: int = 5000) -> list[SampleRecord]:
    """The latest revision of each turn among the last ``count`` entries of the samples stream."""
    entries = client.xrevrange(SAMPLES_STREAM, count=count)
    return latest_per_turn(SampleRecord.model_validate_json(fields[b"record"]) for _, fields in reversed(entries))


def routing_table(client: redis.Redis) -> RoutingTable | None:
    raw = client.get(ROUTING_KEY)
    return RoutingTable.model_validate_json(raw) if raw else None


def canary_state(client: redis.Redis) -> CanaryState | None:
    raw = client.get(CANARY_KEY)
    return CanaryState.model_validate_json(raw) if raw else None


def aliases(client: redis.Redis) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in client.hgetall(ALIASES_KEY).items()}


def versions(client: redis.Redis) -> list[VersionInfo]:
    infos = [VersionInfo.model_validate_json(raw) for raw in client.hgetall(VERSIONS_KEY).values()]
    return sorted(infos, key=lambda info: int(info.version.lstrip("v") or 0))


def scopes(client: redis.Redis, limit: int = 200) -> list[dict[str, Any]]:
    """Every learning scope with a lineage (``global`` first, at most ``limit``): its stable, canary and
    number of versions. A personal scope without a stable of its own is served the global stable."""
    names = [GLOBAL_SCOPE, *sorted(as_text(s) for s in client.smembers(SCOPES_KEY))][:limit]
    rows = []
    for name in names:
        keys = scope_keys(name)
        raw = client.get(keys.canary)
        canary = CanaryState.model_validate_json(raw) if raw else None
        stable = client.hget(keys.aliases, "stable")
        rows.append({"scope": name, "stable": as_text(stable) if stable else None,
                     "canary": canary.version if canary else None, "canary_fraction": canary.fraction if canary else 0.0,
                     "versions": int(client.hlen(keys.versions))})
    return rows


@dataclass(frozen=True)
class PersonalTally:
    """The personal learning scopes at a glance (no per-scope labels: one per user would be too many)."""

    scopes: int
    """personal scopes with a lineage"""
    read: int
    """of which were read for the counts below (at most the reader's limit)"""
    states: Counter[str]
    """their versions by state"""
    stables: int
    """scopes with a stable of their own"""
    canaries: int
    """scopes with a canary running"""


def personal_tally(client: redis.Redis, limit: int = 1000) -> PersonalTally:
    """Versions by state, stables and canaries summed over (at most ``limit``) personal scopes."""
    names = sorted(as_text(s) for s in client.smembers(SCOPES_KEY))
    states: Counter[str] = Counter()
    stables = canaries = 0
    for name in names[:limit]:
        keys = scope_keys(name)
        states.update(VersionInfo.model_validate_json(raw).state for raw in client.hvals(keys.versions))
        stables += bool(client.hget(keys.aliases, "stable"))
        canaries += bool(client.exists(keys.canary))
    return PersonalTally(len(names), min(len(names), limit), states, stables, canaries)


def events(client: redis.Redis, count: int = 200) -> list[tuple[str, AuditEvent]]:
    """The last ``count`` audit events, oldest first, with their stream ids."""
    entries = client.xrevrange(EVENTS_STREAM, count=count)
    return [(as_text(entry_id), AuditEvent.model_validate_json(fields[b"event"])) for entry_id, fields in reversed(entries)]


def canary_view(client: redis.Redis, samples: Sequence[SampleRecord],
                policy: CanaryPolicy | None = None) -> dict[str, Any] | None:
    """The running canary with live statistics of both arms since it started; ``None`` when none runs.

    ``interval`` is the controller's anytime-valid interval of the rate difference (canary - stable)
    at confidence ``1 - policy.alpha``, the one its promote / roll back rules read.
    """
    state = canary_state(client)
    if state is None:
        return None
    policy = policy or CanaryPolicy()
    canary = arm_stats(samples, state.version, since=state.started_at)
    stable = arm_stats(samples, state.stable_at_start, since=state.started_at)
    diff = canary["rate"] - stable["rate"] if canary["rate"] is not None and stable["rate"] is not None else None
    lo, hi = difference_interval(ArmCounts(canary["prefer"], canary["avoid"]), ArmCounts(stable["prefer"], stable["avoid"]),
                                 policy.alpha, policy.rho)
    return {**state.model_dump(), "arms": {"canary": canary, "stable": stable}, "difference": diff,
            "interval": [lo, hi], "confidence": 1 - policy.alpha, "margin": policy.margin}


def stream_stats(client: redis.Redis) -> list[dict[str, Any]]:
    """Length of each stream and, per consumer group, its lag (entries not yet delivered) and pending."""
    out = []
    for stream in STREAMS:
        groups = []
        if client.exists(stream):
            for group in client.xinfo_groups(stream):
                lag = group.get("lag")
                groups.append({"group": as_text(group["name"]), "pending": int(group["pending"]),
                               "lag": int(lag) if lag is not None else None})
        out.append({"stream": stream, "length": int(client.xlen(stream)), "groups": groups})
    return out


def queue_stats(client: redis.Redis) -> list[dict[str, Any]]:
    """RQ queue depths and registry sizes of the labeler's queues."""
    out = []
    for name in QUEUES:
        queue = Queue(name, connection=client)
        out.append({
            "queue": name, "queued": queue.count,
            "started": queue.started_job_registry.count, "failed": queue.failed_job_registry.count,
            "deferred": queue.deferred_job_registry.count, "scheduled": queue.scheduled_job_registry.count,
            "finished": queue.finished_job_registry.count,
        })
    return out
