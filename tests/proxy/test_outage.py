"""Redis goes away mid-run: every request still succeeds, and every record arrives exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from proxy.app import create_app
from proxy.recorder import Entry
from proxy.records import FEEDBACK_STREAM, TRANSITIONS_STREAM, TURNS_STREAM, FeedbackRecord
from proxy.spool import Spool
from tests.proxy.conftest import proxy_settings, read_stream, wait_records
from tests.support.redis_server import RedisServer
from tests.support.servers import serve_in_thread


@pytest.fixture
def durable_redis(tmp_path: Path):
    """A private Redis that keeps its data across a restart (append-only file)."""
    server = RedisServer(tmp_path / "durable-redis", appendonly=True).start()
    yield server
    server.stop()


def chat(sdk: openai.OpenAI, history: list[dict], session: str, stream: bool) -> tuple[str, list[dict]]:
    raw = sdk.chat.completions.with_raw_response.create(
        model="m", messages=history, stream=stream, extra_headers={"X-Session-Id": session})
    if stream:
        content = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        content = raw.parse().choices[0].message.content
    assert content.startswith("echo: ")
    reply = {"role": "assistant", "content": content}
    return raw.headers["x-nextstate-turn-id"], [*history, reply]


def test_outage_spools_then_replays_exactly_once(start_proxy, durable_redis, http) -> None:
    url = start_proxy(redis=durable_redis.url)
    check = durable_redis.client()
    histories: dict[str, list[dict]] = {"a": [], "b": []}
    sent: dict[str, list[str]] = {"a": [], "b": []}
    feedback_ids = []

    with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=10) as sdk:
        def turn(step: int) -> None:
            session = "ab"[step % 2]
            history = [*histories[session], {"role": "user", "content": f"message {step}"}]
            turn_id, histories[session] = chat(sdk, history, session, stream=step % 3 == 0)
            sent[session].append(turn_id)

        for step in range(6):
            turn(step)
        wait_records(check, TURNS_STREAM, 6)
        durable_redis.stop()
        for step in range(6, 16):  # Redis is down: every request must still succeed
            turn(step)
        rated = sent["a"][-1]
        response = http.post(f"{url}/v1/feedback", json={"turn_id": rated, "rating": -1, "comment": "bad"})
        assert response.status_code == 200
        feedback_ids.append(response.json()["id"])
        durable_redis.start()
        check = durable_redis.client()
        for step in range(16, 20):
            turn(step)

    all_turns = sent["a"] + sent["b"]
    records = wait_records(check, TURNS_STREAM, 20, timeout=15)
    time.sleep(0.5)  # anything extra (a duplicate) would have landed by now
    records = read_stream(check, TURNS_STREAM)
    assert sorted(r["turn_id"] for r in records) == sorted(all_turns)
    for session, ids in sent.items():
        ordered = [r["turn_id"] for r in records if r["session_id"] == session]
        assert ordered == ids  # replayed in order
    links = read_stream(check, TRANSITIONS_STREAM)
    assert len(links) == len({t["transition_id"] for t in links}) == 18
    expected = {(ids[i], ids[i + 1]) for ids in sent.values() for i in range(len(ids) - 1)}
    assert {(t["turn_id"], t["next_turn_id"]) for t in links} == expected
    assert all(t["has_next_state"] and len(t["next_state"]) == 1 for t in links)
    feedback = wait_records(check, FEEDBACK_STREAM, 1)
    assert [(f["feedback_id"], f["turn_id"], f["rating"]) for f in feedback] == [(feedback_ids[0], rated, -1)]
    metrics = http.get(f"{url}/metrics").text
    assert 'nextstate_proxy_records_total{kind="turn",outcome="spooled"}' in metrics
    assert 'nextstate_proxy_records_total{kind="turn",outcome="replayed"}' in metrics
    assert "nextstate_proxy_spool_pending 0.0" in metrics


def test_spool_left_by_a_stopped_proxy_is_replayed_by_the_next(tmp_path, durable_redis, fake, upstream_url) -> None:

    settings = proxy_settings(tmp_path, durable_redis.url, upstream_url)
    durable_redis.stop()
    with serve_in_thread(create_app(settings), timeout_graceful_shutdown=2) as url, openai.OpenAI(
        base_url=f"{url}/v1", api_key="k", max_retries=0
    ) as sdk:
        ids = [chat(sdk, [{"role": "user", "content": f"q{i}"}], f"s{i}", stream=False)[0] for i in range(3)]
        time.sleep(0.3)
    assert (settings.spool_path() / "slot-0" / "spool.jsonl").stat().st_size > 0
    durable_redis.start()
    with serve_in_thread(create_app(settings), timeout_graceful_shutdown=2):
        records = wait_records(durable_redis.client(), TURNS_STREAM, 3, timeout=10)
    assert sorted(r["turn_id"] for r in records) == sorted(ids)
    assert (settings.spool_path() / "slot-0" / "spool.jsonl").stat().st_size == 0


def test_spools_of_processes_gone_for_good_are_adopted(tmp_path, redis_url, redis_client, upstream_url) -> None:
    """Four workers spooled, one came back: it replays every slot, not only its own, damaged lines aside."""

    settings = proxy_settings(tmp_path, redis_url, upstream_url)
    slots = [Spool.claim(settings.spool_path()) for _ in range(4)]
    slots[2].append('{"kind": "turn", "turn": {"damaged')  # a damaged line must not block the rest
    for index, spool in enumerate(slots):
        record = FeedbackRecord(record_id=f"fb-{index}", feedback_id=str(index), turn_id="t", rating=1)
        spool.append(Entry(kind="feedback", feedback=record).model_dump_json())
        spool.close()
    with serve_in_thread(create_app(settings), timeout_graceful_shutdown=2):
        records = wait_records(redis_client, FEEDBACK_STREAM, 4, timeout=10)
    assert sorted(r["feedback_id"] for r in records) == ["0", "1", "2", "3"]
    assert all((settings.spool_path() / f"slot-{i}" / "spool.jsonl").stat().st_size == 0 for i in range(4))
