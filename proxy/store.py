"""Redis writes of the proxy: idempotent record appends, session state, transitions, idle sweeping.

Every record goes through one Lua script: ``SET NX`` of the record's seen-key, and only if that
succeeded ``XADD`` (plus the JSON copy of a turn at ``turn_key``). Replaying a spool or retrying a
write can therefore never duplicate a record. Per-session state is a hash with a TTL; sessions are
also listed in a sorted set by last activity so that any replica can close idle ones, and
``ZREM`` decides which replica does.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from proxy.records import (
    FEEDBACK_STREAM,
    TRANSITIONS_STREAM,
    TURNS_STREAM,
    FeedbackRecord,
    TransitionReason,
    TransitionRecord,
    TurnRecord,
    record_seen_key,
    session_key,
    turn_key,
)
from proxy.sessions import Link, PreviousTurn, chain_hash, link

IDLE_SESSIONS_KEY = "nextstate:sessions:idle"

_WRITE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('XADD', KEYS[2], '*', 'record', ARGV[1])
  if #KEYS > 2 then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2]) end
  return 1
end
return 0
"""


def chain_key(digest: str) -> str:
    """Key mapping the fingerprint of a history (request + reply) to its session id."""
    return f"nextstate:chain:{{{digest}}}"


def transition_id(turn_id: str) -> str:
    """A turn has exactly one transition; its id is derived from the turn's id."""
    return f"tr-{turn_id}"


class Store:
    def __init__(self, redis_client: aioredis.Redis, *, ttl_s: int, session_ttl_s: int) -> None:
        self.redis = redis_client
        self.ttl_s = ttl_s
        self.session_ttl_s = session_ttl_s

    def _queue_write(self, pipe: Any, record_id: str, stream: str, payload: str, copy_key: str | None = None) -> None:
        """Queue the idempotent append of ``payload`` on a pipeline (or run it on the client)."""
        keys = [record_seen_key(record_id), stream, *([copy_key] if copy_key else [])]
        # plain EVAL: Redis caches the compiled script by its hash; EVALSHA would cost a SCRIPT EXISTS per pipeline
        pipe.eval(_WRITE, len(keys), *keys, payload, self.ttl_s)

    async def write(self, record_id: str, stream: str, payload: str, copy_key: str | None = None) -> bool:
        """Append ``payload`` to ``stream`` once per record id; True when it was new."""
        pipe = self.redis.pipeline(transaction=False)
        self._queue_write(pipe, record_id, stream, payload, copy_key)
        [written] = await pipe.execute()
        return bool(written)

    async def write_feedback(self, feedback: FeedbackRecord) -> bool:
        return await self.write(feedback.record_id, FEEDBACK_STREAM, feedback.model_dump_json())

    def _queue_close(
        self, pipe: Any, *, turn_id: str, session_id: str, turn_index: int, reason: TransitionReason,
        next_state: list[dict[str, Any]] | None = None, next_turn_id: str | None = None,
    ) -> None:
        record_id = transition_id(turn_id)
        record = TransitionRecord(
            record_id=record_id, transition_id=record_id, turn_id=turn_id, session_id=session_id,
            turn_index=turn_index, next_state=next_state or [], has_next_state=bool(next_state),
            reason=reason, next_turn_id=next_turn_id,
        )
        self._queue_write(pipe, record_id, TRANSITIONS_STREAM, record.model_dump_json())

    async def previous(self, session_id: str) -> tuple[PreviousTurn, int] | None:
        state = await self.redis.hgetall(session_key(session_id))
        if not state:
            return None
        s = {k.decode(): v.decode() for k, v in state.items()}
        previous = PreviousTurn(s["turn_id"], int(s["n_messages"]), s["prefix_hash"], s["reply_digest"])
        return previous, int(s.get("turn_index", 0))

    async def find_session(self, digests: list[str]) -> str | None:
        raw = await self.redis.get(chain_key(chain_hash(digests)))
        return raw.decode() if raw else None

    async def record_turn(self, turn: TurnRecord, digests: list[str], reply_digest: str, *,
                          chained: bool, done: bool) -> Link | None:
        """Link the session's previous turn to this one, store this turn, move the session on.

        Two round trips: read the session state, then one pipeline with every write.
        """
        sid = turn.session_id
        found = await self.previous(sid)
        outcome = None
        pipe = self.redis.pipeline(transaction=False)
        if found is not None and found[0].turn_id != turn.turn_id:  # equal: a replay of this very turn
            previous, previous_index = found
            outcome = link(previous, turn.request.messages, digests)
            self._queue_close(
                pipe, turn_id=previous.turn_id, session_id=sid, turn_index=previous_index, reason="next_request",
                next_state=outcome.next_state if outcome.linked else [], next_turn_id=turn.turn_id,
            )
        self._queue_write(pipe, turn.record_id, TURNS_STREAM, turn.model_dump_json(), turn_key(turn.turn_id))
        if done:
            self._queue_close(pipe, turn_id=turn.turn_id, session_id=sid, turn_index=turn.turn_index,
                              reason="session_done")
            pipe.delete(session_key(sid))
            pipe.zrem(IDLE_SESSIONS_KEY, sid)
        else:
            pipe.hset(session_key(sid), mapping={
                "turn_id": turn.turn_id, "turn_index": turn.turn_index, "n_messages": len(turn.request.messages),
                "prefix_hash": chain_hash(digests), "reply_digest": reply_digest, "updated_at": turn.created_at,
            })
            pipe.expire(session_key(sid), self.session_ttl_s)
            pipe.zadd(IDLE_SESSIONS_KEY, {sid: turn.created_at})
            if chained:
                pipe.set(chain_key(chain_hash([*digests, reply_digest])), sid, ex=self.session_ttl_s)
        await pipe.execute()
        return outcome

    async def sweep_idle(self, idle_timeout_s: float, now: float | None = None, limit: int = 200) -> int:
        """Close sessions idle for longer than the timeout; each is closed by exactly one caller."""
        now = time.time() if now is None else now
        cutoff = now - idle_timeout_s
        closed = 0
        for raw in await self.redis.zrangebyscore(IDLE_SESSIONS_KEY, "-inf", cutoff, start=0, num=limit):
            if not await self.redis.zrem(IDLE_SESSIONS_KEY, raw):
                continue  # another replica claimed it
            sid = raw.decode()
            state = await self.redis.hgetall(session_key(sid))
            if not state:
                continue
            s = {k.decode(): v.decode() for k, v in state.items()}
            updated = float(s.get("updated_at", 0))
            if updated > cutoff:  # the session moved on after it was listed: keep it listed
                await self.redis.zadd(IDLE_SESSIONS_KEY, {sid: updated})
                continue
            pipe = self.redis.pipeline(transaction=False)
            self._queue_close(pipe, turn_id=s["turn_id"], session_id=sid, turn_index=int(s.get("turn_index", 0)),
                              reason="idle_timeout")
            pipe.delete(session_key(sid))
            await pipe.execute()
            closed += 1
        return closed
