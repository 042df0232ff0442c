"""Samples in Redis: one current sample per turn, each revision appended once to the samples stream.

Every label event (a judged transition, an explicit feedback, a strong-judge relabel) has an id.
A revision is written by one Lua script that checks, atomically, that the event was not applied
yet and that nobody wrote a newer revision meanwhile; then it appends the revision to the stream
and replaces the current copy. A re-delivered or retried event is therefore a no-op, and two
writers of the same turn serialise (the loser re-reads and re-applies). The turn's sample copy and the
samples stream share the hash tag ``{learn}``, so the script runs on Redis Cluster too.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import redis

from labeler.records import SAMPLES_STREAM, LabelSource, SampleRecord, sample_key
from proxy.records import TokenCapture, TurnRecord, turn_key

# which verdict decides a sample's label when several sources judged the same turn
PRECEDENCE: dict[str, int] = {"none": 0, "judge": 1, "feedback": 2, "strong_judge": 3}

_COMMIT = """
local current = redis.call('GET', KEYS[1])
local revision = -1
if current then
  local sample = cjson.decode(current)
  revision = sample['revision']
  local events = sample['events']
  if type(events) == 'table' then
    for _, applied in ipairs(events) do
      if applied == ARGV[3] then return -2 end
    end
  end
end
if revision ~= tonumber(ARGV[1]) then return -1 end
redis.call('XADD', KEYS[2], '*', 'record', ARGV[2])
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

Outcome = Literal["written", "duplicate", "skipped"]


class LabelConflict(RuntimeError):
    """Too many concurrent writers of one turn (retryable)."""


@dataclass(frozen=True)
class Commit:
    outcome: Outcome
    sample: SampleRecord | None


def winner(verdicts: dict[str, dict[str, Any]]) -> str:
    """The source whose verdict decides the label: strong judge > explicit feedback > judge > none."""
    return max(verdicts, key=lambda source: PRECEDENCE.get(source, 0), default="none")


def job_safe(text: str) -> str:
    """``text`` as an RQ job id fragment (letters, digits, ``_``, ``-``); a digest keeps it unique."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", text)
    return safe if safe == text else f"{safe[:80]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def load_turn(client: redis.Redis, turn_id: str) -> TurnRecord | None:
    raw = client.get(turn_key(turn_id))
    return None if raw is None else TurnRecord.model_validate_json(raw)


def current_sample(client: redis.Redis, turn_id: str) -> SampleRecord | None:
    raw = client.get(sample_key(turn_id))
    return None if raw is None else SampleRecord.model_validate_json(raw)


def payload_from_turn(turn: TurnRecord | None) -> dict[str, Any]:
    """The training payload a sample copies from its turn (empty when the turn is gone)."""
    if turn is None:
        return {"messages": [], "response": {}, "tools": None, "tokens": TokenCapture()}
    return {"messages": turn.request.messages, "tools": turn.request.tools, "response": turn.response.message,
            "tokens": turn.tokens, "serving_version": turn.serving.version, "session_id": turn.session_id,
            "scope": turn.scope, "version_scope": turn.serving.version_scope}


def apply_verdict(previous: SampleRecord | None, base: dict[str, Any], source: LabelSource,
                  verdict: dict[str, Any], event_id: str, hard: bool | None = None) -> SampleRecord:
    """The next revision of a turn's sample after ``source`` gave ``verdict`` (pure).

    ``base`` holds the turn's ids and training payload. All verdicts are kept in ``verdicts``; the
    label comes from the winning source; ``previous`` keeps the verdict that decided the label
    before, when another source decides it now. ``hard`` overrides the winner's hard flag.
    """
    verdicts = dict(previous.verdicts) if previous is not None else {}
    verdicts[source] = verdict
    decider = winner(verdicts)
    chosen = verdicts[decider]
    fields: dict[str, Any] = {}
    if previous is not None:
        fields = previous.model_dump(exclude={"record_id", "revision", "created_at", "previous", "verdicts", "events"})
        if not base.get("messages"):  # keep the payload of an earlier revision when the turn is gone now
            base = {k: v for k, v in base.items() if k not in {"messages", "response", "tools", "tokens"}}
    fields.update(base)
    fields.update(
        cls=chosen["cls"], reward=chosen["reward"], votes=[v for v in chosen.get("votes", []) if v is not None],
        agreement=chosen.get("agreement", 0.0), source=decider, judge_model=chosen.get("model"),
        prompt_version=chosen.get("prompt_version"), reason=chosen.get("reason"),
        truncated=bool(chosen.get("truncated", fields.get("truncated", False))),
        hard=bool(chosen.get("hard", False)) if hard is None else hard,
        hint=chosen.get("hint") or next((v["hint"] for v in verdicts.values() if v.get("hint")), None),
    )
    if chosen.get("reason") == "turn_missing" and fields.get("messages") and chosen["reward"]:
        # explicit feedback stored before its turn arrived: now that the turn is here, it can train
        fields.update(cls="prefer" if chosen["reward"] > 0 else "avoid", reason=None)
    revision = previous.revision + 1 if previous is not None else 0
    prior = None
    if previous is not None:
        prior = previous.verdicts.get(previous.source) if previous.source != decider else previous.previous
    return SampleRecord(
        **fields, record_id=f"{fields['turn_id']}:r{revision}", revision=revision, created_at=time.time(),
        previous=prior, verdicts=verdicts, events=[*(previous.events if previous is not None else []), event_id],
    )


class SampleStore:
    """Reads and writes samples on a synchronous Redis client (workers are synchronous)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._commit = client.register_script(_COMMIT)

    def commit(self, turn_id: str, event_id: str,
               build: Callable[[SampleRecord | None], SampleRecord | None], attempts: int = 20) -> Commit:
        """Apply one label event exactly once: ``build(current)`` returns the next revision or None."""
        for _ in range(attempts):
            current = current_sample(self.redis, turn_id)
            if current is not None and event_id in current.events:
                return Commit("duplicate", current)
            new = build(current)
            if new is None:
                return Commit("skipped", current)
            expected = current.revision if current is not None else -1
            result = int(self._commit(keys=[sample_key(turn_id), SAMPLES_STREAM],
                                      args=[expected, new.model_dump_json(), event_id]))
            if result == 1:
                return Commit("written", new)
            if result == -2:
                return Commit("duplicate", current_sample(self.redis, turn_id))
        raise LabelConflict(f"could not write a sample for turn {turn_id} after {attempts} attempts")

    def current(self, turn_id: str) -> SampleRecord | None:
        return current_sample(self.redis, turn_id)

    def history(self, turn_id: str | None = None) -> list[SampleRecord]:
        """Every revision in the samples stream (optionally of one turn), oldest first."""
        entries: Any = self.redis.xrange(SAMPLES_STREAM)
        samples = [SampleRecord.model_validate_json(fields[b"record"]) for _, fields in entries]
        return [s for s in samples if turn_id is None or s.turn_id == turn_id]
