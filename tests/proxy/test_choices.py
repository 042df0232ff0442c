"""Requests with ``n > 1``: every choice is a turn, and the conversation links to the choice it went on with."""

from __future__ import annotations

import openai
import pytest

from tests.proxy.conftest import transitions, turns

U1 = {"role": "user", "content": "name a colour"}
U2 = {"role": "user", "content": "why that one?"}


@pytest.mark.parametrize("stream", [False, True])
def test_every_choice_is_recorded_as_a_turn(client, redis_client, stream: bool) -> None:
    usage = {"stream_options": {"include_usage": True}} if stream else {}
    raw = client.chat.completions.with_raw_response.create(model="m", messages=[U1], n=3, stream=stream,
                                                           extra_headers={"X-Session-Id": "many"}, **usage)
    if stream:
        said: dict[int, str] = {}
        for chunk in raw.parse():
            for choice in chunk.choices:
                said[choice.index] = said.get(choice.index, "") + (choice.delta.content or "")
        assert said == {0: "echo: name a colour", 1: "echo: name a colour [1]", 2: "echo: name a colour [2]"}
    else:
        assert [c.message.content for c in raw.parse().choices] == [
            "echo: name a colour", "echo: name a colour [1]", "echo: name a colour [2]"]
    turn_id = raw.headers["x-nextstate-turn-id"]
    records = turns(redis_client, 3)
    assert [(r["turn_id"], r["choice_index"], r["choice_of"]) for r in records] == [
        (turn_id, 0, None), (f"{turn_id}-c1", 1, turn_id), (f"{turn_id}-c2", 2, turn_id)]
    assert [r["response"]["message"]["content"] for r in records] == [
        "echo: name a colour", "echo: name a colour [1]", "echo: name a colour [2]"]
    assert [r["tokens"]["response_token_ids"] for r in records] == [
        [ord(c) for c in r["response"]["message"]["content"]] for r in records]
    assert {r["session_id"] for r in records} == {"many"} and {r["turn_index"] for r in records} == {0}
    assert records[0]["response"]["usage"] is not None and records[1]["response"]["usage"] is None
    assert redis_client.get(f"nextstate:{{rec}}:turn:{turn_id}-c2") is not None  # each loadable by id


@pytest.mark.parametrize("headers", [{"X-Session-Id": "pick"}, {}], ids=["header", "fingerprint"])
def test_the_choice_the_conversation_goes_on_with_gets_the_next_state(client, redis_client, headers) -> None:
    raw = client.chat.completions.with_raw_response.create(model="m", messages=[U1], n=3, extra_headers=headers)
    picked = raw.parse().choices[2].message.model_dump(exclude_none=True)
    turn_id = raw.headers["x-nextstate-turn-id"]
    follow = client.chat.completions.with_raw_response.create(
        model="m", messages=[U1, picked, U2], extra_headers={**headers, "X-Session-Done": "true"})
    records = turns(redis_client, 4)
    assert len({r["session_id"] for r in records}) == 1
    links = {t["turn_id"]: t for t in transitions(redis_client, 4)}
    assert set(links) == {turn_id, f"{turn_id}-c1", f"{turn_id}-c2", follow.headers["x-nextstate-turn-id"]}
    chosen = links[f"{turn_id}-c2"]
    assert (chosen["reason"], chosen["has_next_state"], chosen["next_state"]) == ("next_request", True, [U2])
    assert chosen["next_turn_id"] == follow.headers["x-nextstate-turn-id"]
    for other in (turn_id, f"{turn_id}-c1"):
        assert (links[other]["reason"], links[other]["has_next_state"]) == ("not_chosen", False)


def test_a_retry_after_several_choices_links_none_and_done_closes_them_all(client, redis_client) -> None:
    headers = {"X-Session-Id": "again"}
    first = client.chat.completions.with_raw_response.create(model="m", messages=[U1], n=2, extra_headers=headers)
    retry = client.chat.completions.with_raw_response.create(
        model="m", messages=[U1], n=2, extra_headers={**headers, "X-Session-Done": "true"})
    a, b = first.headers["x-nextstate-turn-id"], retry.headers["x-nextstate-turn-id"]
    turns(redis_client, 4)
    links = {t["turn_id"]: t for t in transitions(redis_client, 4)}
    assert {k: (v["reason"], v["has_next_state"]) for k, v in links.items()} == {
        a: ("next_request", False), f"{a}-c1": ("next_request", False),
        b: ("session_done", False), f"{b}-c1": ("session_done", False)}


def test_idle_close_covers_every_choice(start_proxy, redis_client) -> None:
    url = start_proxy(session_idle_timeout_s=0.3, sweep_interval_s=0.05)
    with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model="m", messages=[U1], n=2,
                                                            extra_headers={"X-Session-Id": "idle"})
    turn_id = raw.headers["x-nextstate-turn-id"]
    closed = {t["turn_id"]: t["reason"] for t in transitions(redis_client, 2)}
    assert closed == {turn_id: "idle_timeout", f"{turn_id}-c1": "idle_timeout"}
