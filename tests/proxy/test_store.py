"""The Redis store directly: batches, compare-and-set against stale replays, script reloads, sweeping."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from proxy.recorder import Entry
from proxy.records import TRANSITIONS_STREAM, TURNS_STREAM, TurnRecord, TurnRequest, TurnResponse
from proxy.sessions import message_digest
from proxy.store import Store
from tests.proxy.conftest import read_stream


def turn_entry(turn_id: str, session: str, history: list[dict], reply: str, created_at: float = 1.0) -> Entry:
    message = {"role": "assistant", "content": reply}
    turn = TurnRecord(
        record_id=turn_id, turn_id=turn_id, session_id=session, turn_index=len(history) // 2, created_at=created_at,
        request=TurnRequest(messages=history), response=TurnResponse(message=message),
    )
    return Entry(kind="turn", turn=turn, digests=[message_digest(m) for m in history],
                 reply_digest=message_digest(message))


def conversation(session: str) -> list[Entry]:
    u1, u2 = {"role": "user", "content": "one"}, {"role": "user", "content": "two"}
    a1 = {"role": "assistant", "content": "r1"}
    return [turn_entry(f"{session}-1", session, [u1], "r1"), turn_entry(f"{session}-2", session, [u1, a1, u2], "r2")]


def run(redis_url: str, work) -> object:
    async def main():
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await work(Store(client, ttl_s=60, session_ttl_s=60), client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_turns_of_one_session_in_one_batch_are_linked(redis_url, redis_client) -> None:
    async def work(store, client):
        return await store.apply(conversation("s"))

    assert run(redis_url, work) == [1, 1]
    [link] = read_stream(redis_client, TRANSITIONS_STREAM)
    assert (link["turn_id"], link["next_turn_id"], link["next_state"]) == ("s-1", "s-2", [{"role": "user", "content": "two"}])


def test_a_stale_replay_writes_no_false_transition(redis_url, redis_client) -> None:
    first, second = conversation("s")

    async def work(store, client):
        await store.apply([first, second])
        return await store.apply([first, second])  # replayed after the session moved on

    assert run(redis_url, work) == [0, 0]  # both already stored: nothing else is touched
    assert len(read_stream(redis_client, TURNS_STREAM)) == 2
    assert len(read_stream(redis_client, TRANSITIONS_STREAM)) == 1


def test_scripts_are_reloaded_after_a_flush(redis_url, redis_client) -> None:
    async def work(store, client):
        await store.apply(conversation("a")[:1])
        await client.script_flush()
        return await store.apply(conversation("b")[:1])

    assert run(redis_url, work) == [1]


def test_idle_sessions_close_once_whoever_sweeps(redis_url, redis_client) -> None:
    async def work(store, client):
        await store.apply([conversation("a")[0], turn_entry("b-1", "b", [{"role": "user", "content": "x"}], "y", 5.0)])
        other = Store(client, ttl_s=60, session_ttl_s=60)
        closed = await asyncio.gather(store.sweep_idle(10, now=12.0), other.sweep_idle(10, now=12.0))
        again = await store.sweep_idle(10, now=12.0)
        return sorted(closed), again

    assert run(redis_url, work) == ([0, 1], 0)
    closed = read_stream(redis_client, TRANSITIONS_STREAM)
    assert [(t["turn_id"], t["reason"]) for t in closed] == [("a-1", "idle_timeout")]


def test_a_slow_answer_is_idle_from_when_it_was_delivered(redis_url, redis_client) -> None:
    slow = turn_entry("a-1", "a", [{"role": "user", "content": "x"}], "y", created_at=1.0)
    slow.turn.timings.total_ms = 30_000.0  # asked at 1 s, answered at 31 s

    async def work(store, client):
        await store.apply([slow])
        early = await store.sweep_idle(10, now=35.0)  # 34 s after the question, 4 s after the answer: still open
        late = await store.sweep_idle(10, now=42.0)
        return early, late

    assert run(redis_url, work) == (0, 1)


def test_a_session_moved_on_by_another_writer_is_not_overwritten(redis_url, redis_client) -> None:
    first, second = conversation("s")

    async def work(store, client):
        await store.apply([first])
        await store.apply([second])
        # a writer that read the state before `second` landed: it links against s-1
        state = {"turn_id": "s-1", "n_messages": 1, "prefix_hash": "x", "reply_digest": "y", "turn_index": 0}
        pipe = client.pipeline(transaction=False)
        store._queue_turn(pipe, turn_entry("s-3", "s", [{"role": "user", "content": "z"}], "w"), state)
        return await pipe.execute()

    assert run(redis_url, work) == [11]  # the turn is stored, the session is left alone
    assert [t["turn_id"] for t in read_stream(redis_client, TRANSITIONS_STREAM)] == ["s-1"]
