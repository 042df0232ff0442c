"""A tool-calling client end to end: the ``openai`` SDK sends ``tools`` (``tool_choice: auto``) through the
proxy to an upstream that answers as vLLM does with a tool-call parser (tests.support.fake_upstream: the
tool call parsed out of the text, its tokens' ids and logprobs in the answer, streamed and whole); each
turn is recorded with its exact tokens and linked to the tool result the client sends next."""

from __future__ import annotations

import json

import pytest

from tests.proxy.conftest import transitions, turns
from tests.support.fake_upstream import Reply

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = {"id": "call_7", "name": "get_weather", "arguments": '{"city": "Lyon"}'}
ASK = {"role": "user", "content": "Do I need an umbrella in Lyon?"}
RESULT = {"role": "tool", "tool_call_id": "call_7", "content": json.dumps({"rain_mm": 4})}


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_is_recorded_and_linked_to_the_tool_result(client, fake, redis_client, stream) -> None:
    fake.push(Reply(tool_calls=[CALL]), Reply(content="Yes, take one."))
    first = client.chat.completions.create(model="m", messages=[ASK], tools=TOOLS, tool_choice="auto", stream=stream)
    if stream:
        chunks = list(first)
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                            for c in chunks if c.choices and c.choices[0].delta.tool_calls)
        assert all("token_ids" not in (c.choices[0].model_extra or {}) for c in chunks if c.choices)
    else:
        call = first.choices[0].message.tool_calls[0]
        assert (first.choices[0].finish_reason, call.id, call.function.name) == ("tool_calls", "call_7", "get_weather")
        arguments = call.function.arguments
        assert first.choices[0].logprobs is None  # the capture fields the client did not ask for are stripped
    assert json.loads(arguments) == {"city": "Lyon"}
    sent = fake.requests[-1]["body"]
    assert (sent["tools"], sent["tool_choice"]) == (TOOLS, "auto")
    assert sent["logprobs"] is True and sent["return_token_ids"] is True

    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}
    second = client.chat.completions.create(model="m", messages=[ASK, assistant, RESULT], tools=TOOLS,
                                            tool_choice="auto")
    assert second.choices[0].message.content == "Yes, take one."

    records = turns(redis_client, 2)
    turn = records[0]
    assert turn["response"]["message"]["tool_calls"] == assistant["tool_calls"]
    assert turn["response"]["finish_reason"] == "tool_calls" and turn["request"]["tools"] == TOOLS
    generated = CALL["name"] + CALL["arguments"]
    assert turn["tokens"]["method"] == "captured"
    assert turn["tokens"]["response_token_ids"] == [ord(c) for c in generated]
    assert len(turn["tokens"]["response_logprobs"]) == len(generated)
    assert records[1]["session_id"] == turn["session_id"]  # found by the history, no session named
    link = transitions(redis_client, 1)[0]
    assert (link["turn_id"], link["next_turn_id"], link["has_next_state"]) == (
        turn["turn_id"], records[1]["turn_id"], True)
    assert link["next_state"] == [RESULT]
