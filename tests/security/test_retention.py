"""Retention: stream entries past the configured age are trimmed by their id's time, and spooled records
past it are dropped at replay instead of written."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis

from proxy.metrics import Metrics
from proxy.recorder import Entry, Recorder
from proxy.records import FEEDBACK_STREAM, FeedbackRecord
from proxy.spool import Spool
from proxy.store import Store
from registry.retention import STREAMS, cutoff_id, trim
from tests.security.conftest import SUITE
from tests.support import figures

DAY = 86400.0


def test_streams_are_trimmed_by_entry_time(redis_client: redis.Redis) -> None:
    now = time.time()
    for stream in STREAMS:
        for age_days in (30, 8, 7.01, 6.99, 1, 0):
            redis_client.xadd(stream, {"record": "{}"}, id=f"{int((now - age_days * DAY) * 1000)}-0")
    removed = trim(redis_client, 7 * DAY, now=now)
    assert removed == {stream: 3 for stream in STREAMS}
    cutoff = int(cutoff_id(7 * DAY, now).split("-")[0])
    kept_too_old = sum(int(i.split(b"-")[0]) < cutoff for s in STREAMS for i, _ in redis_client.xrange(s))
    figures.add(SUITE, "records kept past retention", kept_too_old)
    assert kept_too_old == 0 and all(redis_client.xlen(s) == 3 for s in STREAMS)
    assert trim(redis_client, 7 * DAY, now=now) == {stream: 0 for stream in STREAMS}


def test_spooled_records_past_retention_are_not_replayed(redis_url: str, redis_client: redis.Redis,
                                                         tmp_path: Path) -> None:
    spool = Spool(tmp_path / "slot-0")
    now = time.time()
    for name, created in (("old", now - 8 * DAY), ("new", now - 60)):
        record = FeedbackRecord(record_id=f"fb-{name}", feedback_id=name, turn_id="t", rating=1, created_at=created)
        spool.append(Entry(kind="feedback", feedback=record).model_dump_json())

    async def replay() -> None:
        client = aioredis.Redis.from_url(redis_url)
        recorder = Recorder(Store(client, ttl_s=60, session_ttl_s=60), spool, Metrics(), retention_s=7 * DAY)
        assert await recorder.replay(force=True)
        await client.aclose()

    asyncio.run(replay())
    spool.close()
    stored = [fields[b"record"] for _, fields in redis_client.xrange(FEEDBACK_STREAM)]
    assert len(stored) == 1 and b'"new"' in stored[0]
    figures.add(SUITE, "records kept past retention", sum(b'"old"' in s for s in stored))
