"""The Responses API through the proxy: served as the upstream answers it (streamed or whole), and each turn
recorded in the chat shape and linked to its next state, whether the client chains responses by
``previous_response_id`` or sends the whole conversation back itself."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from proxy import items
from tests.proxy.conftest import read_stream, transitions, turns
from tests.proxy.test_errors import assert_openai_error
from tests.support.fake_upstream import Reply

WEATHER = {"type": "function", "name": "weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def _create(client: openai.OpenAI, **kwargs: Any) -> tuple[Any, dict[str, str]]:
    raw = client.responses.with_raw_response.create(model="m", **kwargs)
    return raw.parse(), dict(raw.headers)


def test_a_chain_of_responses_is_recorded_as_one_conversation_with_its_next_states(client, redis_client) -> None:
    first, headers = _create(client, instructions="Be brief.", input="What is 2+2?", temperature=0.2)
    assert first.output_text == "echo: What is 2+2?"
    second, headers2 = _create(client, instructions="Be brief.", previous_response_id=first.id,
                               input="Too long. Just the number.")
    assert second.output_text == "echo: Too long. Just the number."
    assert headers2["x-nextstate-session-id"] == headers["x-nextstate-session-id"]

    one, two = turns(redis_client, 2)
    assert (one["turn_id"], two["turn_id"]) == (headers["x-nextstate-turn-id"], headers2["x-nextstate-turn-id"])
    assert one["api"] == two["api"] == "responses"
    assert one["request"]["messages"] == [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "What is 2+2?"}]
    assert one["request"]["params"]["temperature"] == 0.2
    assert one["response"]["message"] == {"role": "assistant", "content": "echo: What is 2+2?"}
    assert one["response"]["finish_reason"] == "stop"
    assert one["response"]["usage"]["completion_tokens"] == len("echo: What is 2+2?")
    assert two["request"]["messages"] == [  # the proxy rebuilt what the upstream keeps for the client
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "echo: What is 2+2?"}, {"role": "user", "content": "Too long. Just the number."},
    ]
    assert two["session_id"] == one["session_id"] and two["turn_index"] == one["turn_index"] + 1
    [link] = transitions(redis_client, 1)
    assert (link["turn_id"], link["next_turn_id"]) == (one["turn_id"], two["turn_id"])
    assert link["next_state"] == [{"role": "user", "content": "Too long. Just the number."}]


def test_a_streamed_conversation_the_client_sends_back_whole_is_linked_with_its_tool_results(
    client, fake, redis_client,
) -> None:
    fake.push(Reply(tool_calls=[{"id": "call_1", "name": "weather", "arguments": '{"city": "Oslo"}'}]),
              Reply(content="It is sunny in Oslo.", chunk_chars=4))
    asked = [{"role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]}]
    with client.responses.stream(model="m", input=asked, tools=[WEATHER]) as stream:  # type: ignore[arg-type]
        kinds = [event.type for event in stream]
        first = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    [call] = first.output
    history = [*asked, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": "call_1", "output": '{"sky": "clear"}'}]
    with client.responses.stream(model="m", input=history, tools=[WEATHER]) as stream:  # type: ignore[arg-type]
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
    assert deltas == ["It i", "s su", "nny ", "in O", "slo."]  # as the upstream sent them, in order

    one, two = turns(redis_client, 2)
    assert one["stream"] and one["api"] == "responses"
    assert one["request"]["tools"] == [{"type": "function", "function": {k: WEATHER[k] for k in
                                                                         ("name", "description", "parameters")}}]
    assert one["response"]["finish_reason"] == "tool_calls"
    assert one["response"]["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]
    assert two["session_id"] == one["session_id"]  # found by the conversation's fingerprint
    assert two["response"]["message"]["content"] == "It is sunny in Oslo."
    [link] = transitions(redis_client, 1)
    assert link["next_state"] == [{"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'}]


def test_what_the_proxy_cannot_place_is_served_and_not_recorded(client, fake, redis_client) -> None:
    off, headers = _create(client, input="private", extra_headers={"X-NextState-Record": "off"})
    assert "x-nextstate-turn-id" not in headers
    _, headers = _create(client, input="title this", extra_headers={"X-Turn-Type": "side"})
    assert "x-nextstate-turn-id" not in headers
    # continues a response the proxy never recorded: the earlier conversation is unknown
    later, headers = _create(client, previous_response_id=off.id, input="and then?")
    assert later.output_text == "echo: and then?" and "x-nextstate-turn-id" not in headers
    # kept in a stored conversation object the proxy never sees
    _, headers = _create(client, input="hi", extra_body={"conversation": "conv_1"})
    assert "x-nextstate-turn-id" not in headers
    _, headers = _create(client, input="hello")
    [turn] = turns(redis_client, 1)
    assert turn["turn_id"] == headers["x-nextstate-turn-id"]
    assert turn["request"]["messages"] == [{"role": "user", "content": "hello"}]
    assert len(fake.requests) == 5


def test_errors_are_openai_shaped(proxy_url, client, http, fake, redis_client) -> None:
    assert_openai_error(http.post(f"{proxy_url}/v1/responses", content=b"{not json",
                                  headers={"content-type": "application/json"}), 400)
    assert_openai_error(http.post(f"{proxy_url}/v1/responses", json=["a", "list"]), 400)
    with pytest.raises(openai.BadRequestError) as caught:  # relayed from the upstream with its status
        client.responses.create(model="m", previous_response_id="resp_unknown", input="hi")
    assert caught.value.body["code"] == "previous_response_not_found"  # type: ignore[index]
    fake.push(Reply(status=503))
    with pytest.raises(openai.InternalServerError) as failed:
        client.responses.create(model="m", input="hi")
    assert failed.value.status_code == 503
    assert read_stream(redis_client, "nextstate:{rec}:turns") == []
    assert http.get(f"{proxy_url}/v1/responses/resp_1").json()["path"] == "/v1/responses/resp_1"  # passed through


def test_a_response_cut_at_the_token_limit_is_recorded_as_such(client, fake, redis_client) -> None:
    fake.push(Reply(content="A long ans", finish_reason="length"))
    answer = client.responses.create(model="m", input="Tell me everything.", max_output_tokens=3)
    assert answer.status == "incomplete"
    [turn] = turns(redis_client, 1)
    assert turn["response"]["finish_reason"] == "length"
    assert turn["request"]["params"]["max_output_tokens"] == 3


def test_items_become_chat_messages() -> None:
    given = [
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": "https://x/cat.png"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Un chat."}]},
        {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "tabby"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "Non."}]},
        {"type": "item_reference", "id": "msg_9"},
    ]
    assert items.to_messages(given) == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]},
        {"role": "assistant", "content": "Un chat.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "tabby"},
        {"role": "assistant", "content": "Non."},
    ]
    for bad in ({"input": "x"}, [1], [{"type": "message", "content": "no role"}]):
        with pytest.raises(ValueError):
            items.to_messages(bad)


def test_only_a_finished_response_is_a_completion() -> None:
    said = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi."}]}
    assert items.completion({"id": "r", "status": "completed", "output": [said]})["choices"][0]["message"] == {
        "role": "assistant", "content": "Hi."}
    for status in ("queued", "in_progress", "failed", "cancelled"):  # a background response answers at once
        assert items.completion({"id": "r", "status": status, "output": []}) is None


def test_a_stream_that_never_completes_has_no_response() -> None:
    created = {"type": "response.created", "response": {"id": "r", "status": "in_progress", "output": []}}
    events = f"event: response.created\ndata: {json.dumps(created)}\n\n".encode()
    assert items.final_response(events) is None
    done = {"type": "response.completed", "response": {"id": "r", "status": "completed", "output": []}}
    assert items.final_response(events + f"data: {json.dumps(done)}".encode()) == done["response"]
