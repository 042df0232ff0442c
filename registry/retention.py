"""Retention: conversations older than ``NEXTSTATE_RETENTION_DAYS`` are trimmed from every stream that holds them.

A stream entry's id is the time it was added, so ``XTRIM MINID`` cuts turns, transitions, feedback and
samples at the configured age in one call each (exactly, not approximately). Per-turn, per-session and
per-sample keys expire on their own TTLs; the proxy drops spooled records past the age when it replays
them. Adapters keep their lineage (sample ids in the manifest), never the text. The canary controller
runs ``trim`` every ``NEXTSTATE_RETENTION_INTERVAL_S``; 0 days (the default) keeps everything.
"""

from __future__ import annotations

import threading
import time

import redis
import structlog

from labeler.records import SAMPLES_STREAM
from proxy.records import FEEDBACK_STREAM, TRANSITIONS_STREAM, TURNS_STREAM
from proxy.redis_connect import CLUSTER_UNREACHABLE

log = structlog.get_logger(__name__)

STREAMS = (TURNS_STREAM, TRANSITIONS_STREAM, FEEDBACK_STREAM, SAMPLES_STREAM)


def cutoff_id(max_age_s: float, now: float) -> str:
    """The smallest stream id kept: entries added before ``now - max_age_s`` go."""
    return f"{max(0, int((now - max_age_s) * 1000))}-0"


def trim(client: redis.Redis, max_age_s: float, now: float | None = None) -> dict[str, int]:
    """Trim every conversation stream to ``max_age_s``; entries removed per stream."""
    minid = cutoff_id(max_age_s, time.time() if now is None else now)
    removed = {}
    with client.pipeline(transaction=False) as pipe:
        for stream in STREAMS:
            pipe.xtrim(stream, minid=minid, approximate=False)
        for stream, count in zip(STREAMS, pipe.execute(), strict=True):
            removed[stream] = int(count)
    if any(removed.values()):
        log.info("retention_trimmed", minid=minid, **{k.rsplit(":", 1)[-1]: v for k, v in removed.items()})
    return removed


def run(client: redis.Redis, max_age_s: float, interval_s: float, stop: threading.Event) -> None:
    """Trim every ``interval_s`` until ``stop`` is set (Redis errors are logged and retried next time)."""
    while not stop.is_set():
        try:
            trim(client, max_age_s)
        except (redis.RedisError, *CLUSTER_UNREACHABLE) as exc:
            log.warning("retention_failed", error=repr(exc))
        stop.wait(interval_s)


def start_in_thread(client: redis.Redis, retention_days: float, interval_s: float,
                    stop: threading.Event) -> threading.Thread | None:
    """The retention loop beside another (the controller); None when nothing is to be trimmed."""
    if retention_days <= 0:
        return None
    thread = threading.Thread(target=run, args=(client, retention_days * 86400, interval_s, stop),
                              name="retention", daemon=True)
    thread.start()
    return thread
