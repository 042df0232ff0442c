"""A tool-calling client through the proxy to the embedded policy server, which parses tool calls as vLLM
does with ``--enable-auto-tool-choice --tool-call-parser hermes``: the ``openai`` SDK sends ``tools``
with ``tool_choice: auto``, gets the call back (streamed and whole), runs the tool and sends its result;
each turn is recorded with the exact tokens the server generated and linked to the tool result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from learner.serve import create_app as create_policy_server
from learner.serving_settings import ServeSettings
from proxy.app import create_app as create_proxy
from proxy.records import TRANSITIONS_STREAM, TURNS_STREAM
from proxy.settings import ProxySettings
from tests.proxy.conftest import wait_records
from tests.support.servers import serve_in_thread
from tests.support.tool_model import teach

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ASK = {"role": "user", "content": "Do I need an umbrella in Lyon?"}
GENERATED = '<tool_call>{"name": "get_weather", "arguments": {"city": "Lyon"}}</tool_call>'
RESULT_TEXT = json.dumps({"rain_mm": 4})
ANSWER = "Yes, take one: 4 mm of rain."


def _after_call(call_id: str, arguments: str) -> list[dict[str, Any]]:
    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}
    return [ASK, assistant, {"role": "tool", "tool_call_id": call_id, "content": RESULT_TEXT}]


@pytest.fixture(scope="module")
def policy_url(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    lessons = [([ASK], TOOLS, GENERATED), (_after_call("call_x", '{"city": "Lyon"}'), TOOLS, ANSWER)]
    model = teach(tiny_model_path, tmp_path_factory.mktemp("tool-model"), lessons)
    settings = ServeSettings(home=tmp_path_factory.mktemp("policy"))
    with serve_in_thread(create_policy_server(settings, model_path=model)) as url:
        yield url


@pytest.fixture
def sdk(policy_url: str, redis_url: str, tmp_path: Path) -> Iterator[openai.OpenAI]:
    settings = ProxySettings(home=tmp_path / "home", redis_url=redis_url, upstream_url=f"{policy_url}/v1",
                             read_timeout_s=60.0, connect_timeout_s=2.0)
    with serve_in_thread(create_proxy(settings), timeout_graceful_shutdown=2) as url, \
            openai.OpenAI(base_url=f"{url}/v1", api_key="sk-tools", timeout=60, max_retries=0) as client:
        yield client


def _stream_records(client: redis.Redis, stream: str, count: int) -> list[dict[str, Any]]:
    return wait_records(client, stream, count, timeout=15.0)


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_from_the_policy_server_is_parsed_recorded_and_linked(sdk, redis_client, stream) -> None:
    first = sdk.chat.completions.create(model="tiny-chat", messages=[ASK], tools=TOOLS, tool_choice="auto",
                                        temperature=0, max_tokens=96, stream=stream)
    if stream:
        chunks = [c for c in first if c.choices]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
        assert len({d.id for d in deltas if d.id}) == 1 and all(d.index == 0 for d in deltas)
        call_id, name = deltas[0].id, deltas[0].function.name
        arguments = "".join(d.function.arguments or "" for d in deltas)
        assert not "".join(c.choices[0].delta.content or "" for c in chunks)  # the tags never reach the client
    else:
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [call] = choice.message.tool_calls
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
    assert call_id.startswith("chatcmpl-tool-") and name == "get_weather"
    assert json.loads(arguments) == {"city": "Lyon"}

    conversation = _after_call(call_id, arguments)
    second = sdk.chat.completions.create(model="tiny-chat", messages=conversation, tools=TOOLS, tool_choice="auto",
                                         temperature=0, max_tokens=96)
    assert second.choices[0].message.content == ANSWER and not second.choices[0].message.tool_calls
    assert second.choices[0].finish_reason == "stop"

    turn, follow_up = _stream_records(redis_client, TURNS_STREAM, 2)
    assert turn["response"]["message"]["tool_calls"] == conversation[1]["tool_calls"]
    assert turn["response"]["finish_reason"] == "tool_calls" and turn["request"]["tools"] == TOOLS
    tokens = turn["tokens"]
    assert tokens["method"] == "captured"  # the ids the server generated, tags included, with their logprobs
    assert len(tokens["response_logprobs"]) == len(tokens["response_token_ids"]) >= len(GENERATED)
    assert follow_up["session_id"] == turn["session_id"]  # linked by the history alone
    [link] = _stream_records(redis_client, TRANSITIONS_STREAM, 1)
    assert (link["turn_id"], link["next_turn_id"], link["has_next_state"]) == (
        turn["turn_id"], follow_up["turn_id"], True)
    assert link["next_state"] == [conversation[2]]


def test_tool_choice_none_leaves_the_text_as_written(sdk) -> None:
    answer = sdk.chat.completions.create(model="tiny-chat", messages=[ASK], tools=TOOLS, tool_choice="none",
                                         temperature=0, max_tokens=96)
    assert answer.choices[0].message.content == GENERATED and not answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "stop"


RESPONSES_TOOLS = [{"type": "function", **TOOLS[0]["function"]}]


@pytest.mark.parametrize("stream", [False, True])
def test_the_responses_api_answers_a_tool_call_as_a_function_call_item(sdk, redis_client, stream) -> None:
    ask = {"model": "tiny-chat", "input": ASK["content"], "tools": RESPONSES_TOOLS, "temperature": 0,
           "max_output_tokens": 96}
    if stream:
        with sdk.responses.stream(**ask) as events:
            kinds = [e.type for e in events]
            first = events.get_final_response()
        assert kinds.count("response.function_call_arguments.done") == 1 and "response.output_text.delta" not in kinds
    else:
        first = sdk.responses.create(**ask)
    [item] = first.output
    assert (item.type, item.name, json.loads(item.arguments)) == ("function_call", "get_weather", {"city": "Lyon"})

    second = sdk.responses.create(model="tiny-chat", previous_response_id=first.id, tools=RESPONSES_TOOLS,
                                  temperature=0, max_output_tokens=96,
                                  input=[{"type": "function_call_output", "call_id": item.call_id, "output": RESULT_TEXT}])
    assert second.output_text == ANSWER and [i.type for i in second.output] == ["message"]

    turn, follow_up = _stream_records(redis_client, TURNS_STREAM, 2)
    assert turn["response"]["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in turn["response"]["message"]["tool_calls"]] == ["get_weather"]
    [link] = _stream_records(redis_client, TRANSITIONS_STREAM, 1)
    assert (link["turn_id"], link["next_turn_id"]) == (turn["turn_id"], follow_up["turn_id"])
    assert link["next_state"] == [{"role": "tool", "tool_call_id": item.call_id, "content": RESULT_TEXT}]
