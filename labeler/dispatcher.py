"""The dispatcher: turns each transition and each feedback into exactly one RQ job.

Why a dispatcher and not an enqueue inside the proxy's write: the proxy must stay lean (it never
imports the labeler or RQ job code) and must keep serving when the labeler is down. So the proxy
only appends records to its streams, and this loop — run inside ``nextstate worker`` — reads them
with a Redis consumer group: ``XREADGROUP``, enqueue a job whose id is derived from the record id
(RQ refuses a second job with that id while the first exists), then ``XACK``. A dispatcher that
dies between read and ack leaves the entry pending; any dispatcher re-claims entries idle longer
than ``claim_idle_ms`` with ``XAUTOCLAIM`` and enqueues them again, and the deterministic job id
plus the sample store's event ids make that re-delivery harmless. Several dispatchers (one per
worker host) share the group and split the entries. An entry that cannot be parsed is moved to a
dead-letter stream, never dropped. Jobs that failed for good (also a work horse killed on its last
attempt) are swept: their transition gets an observation-only sample marked ``judge_failed``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import redis
import structlog
from pydantic import ValidationError
from rq.job import Job
from rq.registry import FailedJobRegistry

from labeler.jobs import Runtime, enqueue_feedback, enqueue_hard, enqueue_label
from labeler.samples import SampleStore, apply_verdict, load_turn, payload_from_turn
from proxy.records import FEEDBACK_STREAM, TRANSITIONS_STREAM, FeedbackRecord, TransitionRecord
from proxy.redis_connect import CLUSTER_UNREACHABLE

log = structlog.get_logger("labeler.dispatcher")

DEAD_LETTER_STREAM = "nextstate:labeler:dead-letter"
SWEPT_KEY = "nextstate:labeler:swept"  # set of failed job ids already turned into samples


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Dispatcher:
    def __init__(self, rt: Runtime, consumer: str | None = None) -> None:
        self.rt = rt
        self.redis: redis.Redis = rt.redis
        self.group = rt.settings.consumer_group
        self.consumer = consumer or consumer_name()
        self.streams = (TRANSITIONS_STREAM, FEEDBACK_STREAM)

    def ensure_groups(self) -> None:
        """Create the consumer groups from the start of each stream (nothing recorded is skipped)."""
        for stream in self.streams:
            try:
                self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def run_once(self, block_ms: int | None = None) -> int:
        """Re-claim stale pending entries, read new ones, enqueue and ack them; returns entries handled."""
        handled = 0
        for stream in self.streams:
            reply: Any = self.redis.xautoclaim(stream, self.group, self.consumer,
                                                   min_idle_time=self.rt.settings.claim_idle_ms, start_id="0-0",
                                                   count=self.rt.settings.dispatch_batch)
            handled += self._handle(stream, reply[1])  # [next cursor, claimed entries, deleted ids]
        block = self.rt.settings.dispatch_block_ms if block_ms is None else block_ms
        read: Any = self.redis.xreadgroup(self.group, self.consumer, {s: ">" for s in self.streams},
                                     count=self.rt.settings.dispatch_batch, block=block or None)
        for stream, entries in read or []:
            handled += self._handle(stream.decode() if isinstance(stream, bytes) else stream, entries)
        return handled

    def _handle(self, stream: str, entries: list) -> int:  # type: ignore[type-arg]
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            if fields is None:  # deleted from the stream while pending
                self.redis.xack(stream, self.group, entry_id)
                continue
            try:
                if stream == TRANSITIONS_STREAM:
                    record = TransitionRecord.model_validate_json(fields[b"record"])
                    queued = enqueue_label(self.rt, entry_id, record.transition_id)
                    log.debug("transition_dispatched", transition_id=record.transition_id, queued=queued)
                else:
                    feedback = FeedbackRecord.model_validate_json(fields[b"record"])
                    queued = enqueue_feedback(self.rt, entry_id, feedback.feedback_id)
                    log.debug("feedback_dispatched", feedback_id=feedback.feedback_id, queued=queued)
            except (KeyError, ValidationError) as exc:
                self.redis.xadd(DEAD_LETTER_STREAM, {"stream": stream, "entry_id": entry_id,
                                                     "error": f"{type(exc).__name__}: {exc}"[:1000],
                                                     **{k: v for k, v in fields.items() if k != b"stream"}})
                log.error("entry_unreadable", stream=stream, entry_id=entry_id, error=str(exc)[:300])
            self.redis.xack(stream, self.group, entry_id)
        return len(entries)

    def sweep_failed(self) -> int:
        """Give every transition whose job failed for good an observation-only sample (once)."""
        registry = FailedJobRegistry(queue=self.rt.queue())
        swept = 0
        for job_id in registry.get_job_ids():
            if self.redis.sismember(SWEPT_KEY, job_id):
                continue
            try:
                job = Job.fetch(job_id, connection=self.rt.queues, serializer=self.rt.queue().serializer)
            except Exception:  # the job hash expired: nothing left to recover
                self.redis.sadd(SWEPT_KEY, job_id)
                continue
            if job.func_name == "labeler.jobs.label_transition":
                entry_id, transition_id = (str(arg) for arg in job.args)
                result = job.latest_result()
                self._give_up(entry_id, transition_id, (result.exc_string if result else None) or "job failed")
                swept += 1
            self.redis.sadd(SWEPT_KEY, job_id)
        return swept

    def _give_up(self, entry_id: str, transition_id: str, reason: str) -> None:
        found: Any = self.redis.xrange(TRANSITIONS_STREAM, min=entry_id, max=entry_id)
        if not found:
            return
        transition = TransitionRecord.model_validate_json(found[0][1][b"record"])
        reason = f"judge_failed: {reason.strip().splitlines()[-1] if reason.strip() else 'job failed'}"[:500]
        verdict = {"reward": 0, "votes": [], "agreement": 0.0, "cls": "observation", "hard": True, "reason": reason,
                   "model": None, "prompt_version": None, "source_id": transition_id, "at": time.time()}
        base = {"sample_id": transition.turn_id, "turn_id": transition.turn_id, "session_id": transition.session_id,
                "transition_id": transition_id, "next_state": transition.next_state,
                **payload_from_turn(load_turn(self.redis, transition.turn_id))}
        commit = SampleStore(self.redis).commit(
            transition.turn_id, transition_id,
            lambda current: apply_verdict(current, base, "judge", verdict, event_id=transition_id))
        if commit.outcome == "written":
            enqueue_hard(self.rt, transition.turn_id, "judge_failed")
            log.error("transition_unjudgeable", transition_id=transition_id, reason=reason)

    def run(self, stop: threading.Event) -> None:
        """Dispatch until ``stop`` is set; Redis outages are waited out, never fatal."""
        sweep_every_s = self.rt.settings.sweep_interval_s
        self.ensure_groups()
        last_sweep = 0.0
        while not stop.is_set():
            try:
                self.run_once()
                if time.monotonic() - last_sweep > sweep_every_s:
                    self.sweep_failed()
                    last_sweep = time.monotonic()
            except (redis.ConnectionError, *CLUSTER_UNREACHABLE) as exc:
                log.warning("redis_unavailable", error=str(exc)[:200])
                stop.wait(1.0)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self.ensure_groups()
                else:
                    raise
