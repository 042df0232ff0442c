"""Redis writes of the proxy: idempotent record appends, session state, transitions, idle sweeping.

Every record is appended by Lua: ``SET NX`` of the record's seen-key, and only if that succeeded
``XADD`` (plus the JSON copy of a turn at ``turn_key``). Replaying a spool or retrying a write can
therefore never duplicate a record. A batch of turns costs two round trips: read the sessions' states,
then one pipeline of scripts, each writing a previous turn's transition, the turn and the new session
state, and only if the session is still where the reader saw it (compare-and-set). Session
state is JSON with a TTL; sessions are also listed in a sorted set by last activity so that any
replica can close idle ones, and ``ZREM`` decides which replica does. Every key a script names carries
the hash tag ``{rec}`` (``proxy.records``), so both scripts run on Redis Cluster too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from proxy.records import (
    FEEDBACK_STREAM,
    TRANSITIONS_STREAM,
    TURNS_STREAM,
    FeedbackRecord,
    ResponseContext,
    TransitionReason,
    TransitionRecord,
    TurnRecord,
    record_seen_key,
    response_context_key,
    session_key,
    turn_key,
)
from proxy.sessions import PreviousTurn, chain_hash, link

IDLE_SESSIONS_KEY = "nextstate:{rec}:sessions:idle"  # every key a record write touches is in slot {rec}

_PUT = """
local function put(seen, stream, payload, ttl, copy)
  if redis.call('SET', seen, '1', 'NX', 'EX', ttl) then
    redis.call('XADD', stream, '*', 'record', payload)
    if copy then redis.call('SET', copy, payload, 'EX', ttl) end
    return 1
  end
  return 0
end
"""

# KEYS: seen, stream[, copy]   ARGV: payload, ttl
_WRITE = _PUT + "return put(KEYS[1], KEYS[2], ARGV[1], ARGV[2], KEYS[3])"

# KEYS: 1 turn seen, 2 turns stream, 3 turn copy, 4 previous-transition seen, 5 transitions stream,
#       6 session state, 7 idle set, 8 chain key, 9 closing-transition seen, 10.. seen keys of more
#       transitions (the other choices of a request with n > 1: their previous or closing transitions)
# ARGV: 1 turn json, 2 ttl, 3 previous transition json or '', 4 closing transition json or '',
#       5 session ttl, 6 session id, 7 last activity, 8 session state json, 9 '1' to write the chain key,
#       10 the session's last turn id the caller linked against ('' for none), 11.. the more transitions
# Returns 0 when the turn is stored already (a script runs whole, so then everything it writes is
# there: a replay touches nothing), else 1, plus 10 when the session had moved on since it was read
# (another replica wrote to it): then only the turn itself is written.
_RECORD_TURN = _PUT + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local current = redis.call('GET', KEYS[6])
local current_turn = ''
if current then current_turn = cjson.decode(current)['turn_id'] end
if current_turn ~= ARGV[10] then
  return 10 + put(KEYS[1], KEYS[2], ARGV[1], ARGV[2], KEYS[3])
end
if ARGV[3] ~= '' then put(KEYS[4], KEYS[5], ARGV[3], ARGV[2]) end
for i = 10, #KEYS do put(KEYS[i], KEYS[5], ARGV[i + 1], ARGV[2]) end
local new = put(KEYS[1], KEYS[2], ARGV[1], ARGV[2], KEYS[3])
if ARGV[4] ~= '' then
  put(KEYS[9], KEYS[5], ARGV[4], ARGV[2])
  redis.call('DEL', KEYS[6])
  redis.call('ZREM', KEYS[7], ARGV[6])
else
  redis.call('SET', KEYS[6], ARGV[8], 'EX', ARGV[5])
  redis.call('ZADD', KEYS[7], ARGV[7], ARGV[6])
  if ARGV[9] == '1' then redis.call('SET', KEYS[8], ARGV[6], 'EX', ARGV[5]) end
end
return new
"""


class Work(Protocol):
    """One unit to store: a turn (with what linking needs) or a feedback record."""

    turn: TurnRecord | None
    digests: list[str]
    reply_digest: str
    chained: bool
    done: bool
    feedback: FeedbackRecord | None
    siblings: Sequence[Any]
    """The request's other choices (``n > 1``), each with ``turn`` and ``reply_digest``."""
    context: ResponseContext | None
    """A Responses API turn's conversation, kept for a request that continues its response."""


def chain_key(digest: str) -> str:
    """Key mapping the fingerprint of a history (request + reply) to its session id."""
    return f"nextstate:{{rec}}:chain:{digest}"


def transition_id(turn_id: str) -> str:
    """A turn has exactly one transition; its id is derived from the turn's id."""
    return f"tr-{turn_id}"


def transition(*, turn_id: str, session_id: str, turn_index: int, reason: TransitionReason,
               next_state: list[dict[str, Any]] | None = None, next_turn_id: str | None = None) -> TransitionRecord:
    record_id = transition_id(turn_id)
    return TransitionRecord(
        record_id=record_id, transition_id=record_id, turn_id=turn_id, session_id=session_id,
        turn_index=turn_index, next_state=next_state or [], has_next_state=bool(next_state),
        reason=reason, next_turn_id=next_turn_id,
    )


class Store:
    def __init__(self, redis_client: aioredis.Redis, *, ttl_s: int, session_ttl_s: int) -> None:
        self.redis = redis_client
        self.ttl_s = ttl_s
        self.session_ttl_s = session_ttl_s
        # EVALSHA, re-loading the script by itself after a Redis restart
        self._write = redis_client.register_script(_WRITE)
        self._record_turn = redis_client.register_script(_RECORD_TURN)

    async def write(self, record_id: str, stream: str, payload: str, copy_key: str | None = None) -> bool:
        """Append ``payload`` to ``stream`` once per record id; True when it was new."""
        keys = [record_seen_key(record_id), stream, *([copy_key] if copy_key else [])]
        return bool(await self._write(keys=keys, args=[payload, self.ttl_s]))

    async def write_feedback(self, feedback: FeedbackRecord) -> bool:
        return await self.write(feedback.record_id, FEEDBACK_STREAM, feedback.model_dump_json())

    async def find_session(self, digests: list[str], scope: str) -> str | None:
        raw = await self.redis.get(chain_key(chain_hash(digests, scope)))
        return raw.decode() if raw else None

    async def apply(self, works: Sequence[Work]) -> list[int]:
        """Store a batch in order, in two round trips: read the sessions' states, then every write.

        Returns per item 1 (new) or 0 (already stored), plus 10 for a turn whose session had moved on.
        """
        sids = list({w.turn.session_id for w in works if w.turn is not None})
        raw_states = await self.redis.mget([session_key(sid) for sid in sids]) if sids else []
        states: dict[str, dict[str, Any] | None] = {
            sid: (json.loads(raw) if raw else None) for sid, raw in zip(sids, raw_states, strict=True)
        }
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            overlay = dict(states)  # turns of one session in one batch see each other's state
            positions = []  # where each work's own result is among the pipeline's results
            for work in works:
                positions.append(len(pipe))
                if work.turn is not None:
                    overlay[work.turn.session_id] = self._queue_turn(pipe, work, overlay[work.turn.session_id])
                elif work.feedback is not None:
                    keys = [record_seen_key(work.feedback.record_id), FEEDBACK_STREAM]
                    pipe.evalsha(self._write.sha, len(keys), *keys, work.feedback.model_dump_json(), self.ttl_s)
            try:
                results = await pipe.execute()
                return [int(results[position]) for position in positions]
            except NoScriptError:  # Redis restarted and lost its script cache: load both, once
                if attempt:
                    raise
                await self.redis.script_load(_WRITE)
                await self.redis.script_load(_RECORD_TURN)
        raise AssertionError("unreachable")

    def _previous_transitions(self, state: dict[str, Any], work: Work) -> list[TransitionRecord]:
        """Transitions of the session's last request: its first choice first, then the others.

        The choice the conversation went on with gets the next state; the others are ``not_chosen``.
        When the new request continues none of them (a retry, an edit), each gets an empty next state.
        """
        turn = work.turn
        assert turn is not None
        choices = [(state["turn_id"], state["reply_digest"]), *(tuple(c) for c in state.get("siblings", ()))]
        chosen, next_state = None, []
        for turn_id, reply_digest in choices:
            outcome = link(PreviousTurn(turn_id, state["n_messages"], state["prefix_hash"], reply_digest),
                           turn.request.messages, work.digests)
            if outcome.linked:
                chosen, next_state = turn_id, outcome.next_state
                break
        return [
            transition(turn_id=turn_id, session_id=turn.session_id, turn_index=state["turn_index"],
                       reason="not_chosen" if chosen not in (None, turn_id) else "next_request",
                       next_state=next_state if turn_id == chosen else [], next_turn_id=turn.turn_id)
            for turn_id, _ in choices
        ]

    def _queue_turn(self, pipe: Any, work: Work, state: dict[str, Any] | None) -> dict[str, Any] | None:
        """Queue one turn's script (and its other choices' turns); return the session state it leaves behind."""
        turn = work.turn
        assert turn is not None
        sid = turn.session_id
        previous_json = closing_json = ""
        more: list[TransitionRecord] = []
        expected = state["turn_id"] if state else ""
        if state is not None and state["turn_id"] != turn.turn_id:  # equal: a replay of this very turn
            first, *more = self._previous_transitions(state, work)
            previous_json = first.model_dump_json()
        if work.done:
            closing_json = transition(turn_id=turn.turn_id, session_id=sid, turn_index=turn.turn_index,
                                      reason="session_done").model_dump_json()
            more += [transition(turn_id=s.turn.turn_id, session_id=sid, turn_index=turn.turn_index,
                                reason="session_done") for s in work.siblings]
        # idle from when the answer was delivered, not from when it was asked: a slow answer (a real model on a
        # busy CPU) must not close the conversation before the user has read it
        answered_at = turn.created_at + turn.timings.total_ms / 1000.0
        new_state = {
            "turn_id": turn.turn_id, "turn_index": turn.turn_index, "n_messages": len(turn.request.messages),
            "prefix_hash": chain_hash(work.digests), "reply_digest": work.reply_digest, "updated_at": answered_at,
            "siblings": [[s.turn.turn_id, s.reply_digest] for s in work.siblings],
        }
        keys = [
            record_seen_key(turn.record_id), TURNS_STREAM, turn_key(turn.turn_id),
            record_seen_key(transition_id(expected or turn.turn_id)), TRANSITIONS_STREAM, session_key(sid),
            IDLE_SESSIONS_KEY, chain_key(chain_hash([*work.digests, work.reply_digest], turn.scope)),
            record_seen_key(transition_id(turn.turn_id)), *(record_seen_key(t.record_id) for t in more),
        ]
        args = [turn.model_dump_json(), self.ttl_s, previous_json, closing_json, self.session_ttl_s, sid,
                answered_at, json.dumps(new_state), "1" if work.chained else "", expected,
                *(t.model_dump_json() for t in more)]
        pipe.evalsha(self._record_turn.sha, len(keys), *keys, *args)
        for sibling in work.siblings:  # each choice is a turn of its own, stored once like any record
            keys = [record_seen_key(sibling.turn.record_id), TURNS_STREAM, turn_key(sibling.turn.turn_id)]
            pipe.evalsha(self._write.sha, len(keys), *keys, sibling.turn.model_dump_json(), self.ttl_s)
            if work.chained:  # a fingerprinted conversation may go on with any of the choices
                pipe.set(chain_key(chain_hash([*work.digests, sibling.reply_digest], turn.scope)), sid,
                         ex=self.session_ttl_s)
        if work.context is not None:
            pipe.set(response_context_key(work.context.response_id), work.context.model_dump_json(),
                     ex=self.session_ttl_s)
        return None if work.done else new_state

    async def response_context(self, response_id: str) -> ResponseContext | None:
        """The conversation a request continues when it names ``response_id`` as its previous response."""
        raw = await self.redis.get(response_context_key(response_id))
        return ResponseContext.model_validate_json(raw) if raw else None

    async def sweep_idle(self, idle_timeout_s: float, now: float | None = None, limit: int = 200) -> int:
        """Close sessions idle for longer than the timeout; each is closed by exactly one caller."""
        now = time.time() if now is None else now
        cutoff = now - idle_timeout_s
        closed = 0
        for raw in await self.redis.zrangebyscore(IDLE_SESSIONS_KEY, "-inf", cutoff, start=0, num=limit):
            if not await self.redis.zrem(IDLE_SESSIONS_KEY, raw):
                continue  # another replica claimed it
            sid = raw.decode()
            found = await self.redis.get(session_key(sid))
            if found is None:
                continue
            state = json.loads(found)
            if state["updated_at"] > cutoff:  # the session moved on after it was listed: keep it listed
                await self.redis.zadd(IDLE_SESSIONS_KEY, {sid: state["updated_at"]})
                continue
            for turn_id in [state["turn_id"], *(c[0] for c in state.get("siblings", ()))]:
                record = transition(turn_id=turn_id, session_id=sid, turn_index=state["turn_index"],
                                    reason="idle_timeout")
                await self.write(record.record_id, TRANSITIONS_STREAM, record.model_dump_json())
            await self.redis.delete(session_key(sid))
            closed += 1
        return closed
