"""Sessions end to end: linking by header, by ``user``, by fingerprint; no false links; closing."""

from __future__ import annotations

import time

import openai

from proxy.records import TRANSITIONS_STREAM
from tests.proxy.conftest import read_stream, transitions, turns

U1 = {"role": "user", "content": "what is 2+2?"}
U2 = {"role": "user", "content": "no, try again"}
U3 = {"role": "user", "content": "thanks"}


def converse(client: openai.OpenAI, **kwargs) -> list[str]:
    """Three turns of one conversation; returns the turn ids."""
    history = [U1]
    turn_ids = []
    for next_user in (U2, U3, None):
        raw = client.chat.completions.with_raw_response.create(model="m", messages=history, **kwargs)
        turn_ids.append(raw.headers["x-nextstate-turn-id"])
        reply = raw.parse().choices[0].message
        if next_user is not None:
            history = [*history, reply.model_dump(exclude_none=True), next_user]
    return turn_ids


def assert_chain(redis_client, turn_ids: list[str]) -> None:
    records = turns(redis_client, len(turn_ids))
    assert [r["turn_id"] for r in records] == turn_ids
    assert len({r["session_id"] for r in records}) == 1
    assert [r["turn_index"] for r in records] == [0, 1, 2]
    links = transitions(redis_client, 2)
    assert [(t["turn_id"], t["next_turn_id"], t["has_next_state"]) for t in links] == [
        (turn_ids[0], turn_ids[1], True), (turn_ids[1], turn_ids[2], True)]
    assert [t["next_state"] for t in links] == [[U2], [U3]]
    assert {t["reason"] for t in links} == {"next_request"}


def test_linked_by_session_header(client, redis_client) -> None:
    assert_chain(redis_client, converse(client, extra_headers={"X-Session-Id": "conv-1"}))
    assert turns(redis_client, 3)[0]["session_id"] == "conv-1"


def test_linked_by_user_field(client, redis_client) -> None:
    assert_chain(redis_client, converse(client, user="alice"))


def test_linked_by_fingerprint(client, redis_client) -> None:
    turn_ids = converse(client)
    assert_chain(redis_client, turn_ids)


def test_two_fingerprinted_conversations_with_the_same_opening_stay_apart(client, redis_client) -> None:
    first, second = converse(client), converse(client)
    records = turns(redis_client, 6)
    sessions = {r["turn_id"]: r["session_id"] for r in records}
    assert len({sessions[t] for t in first}) == 1 and len({sessions[t] for t in second}) == 1
    assert sessions[first[0]] != sessions[second[0]]
    linked = [(t["turn_id"], t["next_turn_id"]) for t in transitions(redis_client, 4) if t["has_next_state"]]
    assert sorted(linked) == sorted([(first[0], first[1]), (first[1], first[2]),
                                     (second[0], second[1]), (second[1], second[2])])


def test_retry_and_edit_are_not_linked(client, redis_client) -> None:
    headers = {"X-Session-Id": "conv-2"}
    first = client.chat.completions.with_raw_response.create(model="m", messages=[U1], extra_headers=headers)
    retry = client.chat.completions.with_raw_response.create(model="m", messages=[U1], extra_headers=headers)
    edited = [U1, {"role": "assistant", "content": "an answer the proxy never gave"}, U2]
    edit = client.chat.completions.with_raw_response.create(model="m", messages=edited, extra_headers=headers)
    ids = [r.headers["x-nextstate-turn-id"] for r in (first, retry, edit)]
    turns(redis_client, 3)
    closed = transitions(redis_client, 2)
    assert [(t["turn_id"], t["has_next_state"], t["next_state"]) for t in closed] == [
        (ids[0], False, []), (ids[1], False, [])]


def test_side_turns_and_opt_out_are_served_not_recorded(client, redis_client) -> None:
    side = client.chat.completions.with_raw_response.create(
        model="m", messages=[U1], extra_headers={"X-Session-Id": "s", "X-Turn-Type": "side"})
    off = client.chat.completions.with_raw_response.create(
        model="m", messages=[U1], stream=True, extra_headers={"X-Session-Id": "s", "X-NextState-Record": "off"})
    assert side.parse().choices[0].message.content == "echo: what is 2+2?"
    assert "".join(c.choices[0].delta.content or "" for c in off.parse() if c.choices) == "echo: what is 2+2?"
    assert "x-nextstate-turn-id" not in side.headers and "x-nextstate-turn-id" not in off.headers
    main = client.chat.completions.create(model="m", messages=[U1], extra_headers={"X-Session-Id": "s"})
    assert main.choices[0].message.content
    assert len(turns(redis_client, 1)) == 1
    time.sleep(0.3)
    assert len(turns(redis_client, 2, timeout=0.1)) == 1  # only the main, recorded turn
    assert redis_client.keys("nextstate:{rec}:session:s") != []


def test_session_done_closes_the_last_turn(client, redis_client) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[U1], extra_headers={"X-Session-Id": "done-1", "X-Session-Done": "true"})
    [closing] = transitions(redis_client, 1)
    assert (closing["turn_id"], closing["reason"], closing["has_next_state"]) == (
        raw.headers["x-nextstate-turn-id"], "session_done", False)
    assert redis_client.exists("nextstate:{rec}:session:done-1") == 0


def test_idle_session_closed_once_across_replicas(start_proxy, redis_client) -> None:
    replicas = [start_proxy(session_idle_timeout_s=0.5, sweep_interval_s=0.05) for _ in range(3)]
    ids = []
    for index, url in enumerate(replicas):
        with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as sdk:
            raw = sdk.chat.completions.with_raw_response.create(
                model="m", messages=[U1], extra_headers={"X-Session-Id": f"idle-{index}"})
            ids.append(raw.headers["x-nextstate-turn-id"])
    closed = transitions(redis_client, 3, timeout=5)
    time.sleep(0.5)  # every replica has swept several times by now
    closed = read_stream(redis_client, TRANSITIONS_STREAM)
    assert sorted(t["turn_id"] for t in closed) == sorted(ids)
    assert {(t["reason"], t["has_next_state"]) for t in closed} == {("idle_timeout", False)}
