"""The unmodified openai SDK through the real proxy to a streaming upstream, records in real Redis."""

from __future__ import annotations

import time

import openai

from tests.proxy.conftest import turns
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.servers import serve_in_thread

USER = [{"role": "user", "content": "hello there"}]
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
CALLS = [{"id": "call_1", "name": "add", "arguments": '{"a": 2, "b": 2}'},
         {"id": "call_2", "name": "add", "arguments": '{"a": 1, "b": 3}'}]


def test_chat_non_stream_is_served_and_recorded(client, fake, redis_client) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=USER, temperature=0.3, max_tokens=20, extra_body={"custom_field": "kept"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].logprobs is None  # captured upstream, stripped for the client
    assert "prompt_token_ids" not in (completion.model_extra or {})
    turn_id, session_id = raw.headers["x-nextstate-turn-id"], raw.headers["x-nextstate-session-id"]
    assert float(raw.headers["x-nextstate-overhead-ms"]) >= 0
    sent = fake.requests[-1]["body"]
    assert (sent["custom_field"], sent["logprobs"], sent["return_token_ids"]) == ("kept", True, True)
    [turn] = turns(redis_client, 1)
    assert (turn["turn_id"], turn["session_id"], turn["turn_index"], turn["stream"]) == (turn_id, session_id, 0, False)
    assert turn["request"]["messages"] == USER
    assert turn["request"]["params"] == {"temperature": 0.3, "max_tokens": 20, "custom_field": "kept"}
    assert turn["response"]["message"] == {"role": "assistant", "content": "echo: hello there"}
    assert turn["response"]["finish_reason"] == "stop"
    tokens = turn["tokens"]
    assert tokens["method"] == "captured"
    assert tokens["prompt_token_ids"] == [ord(c) for c in "hello there"]
    assert tokens["response_token_ids"] == [ord(c) for c in "echo: hello there"]
    assert len(tokens["response_logprobs"]) == len("echo: hello there")
    assert turn["serving"] == {"upstream_model": "m", "version": None, "arm": "base", "scope": "global",
                               "version_scope": "global"}
    assert turn["client_key_hash"] and "sk-test-key" not in str(turn)
    assert redis_client.get(f"nextstate:{{rec}}:turn:{turn_id}") is not None  # loadable by id


def test_stream_content_and_chunk_order_preserved(client, fake, redis_client) -> None:
    fake.push(Reply(content="one two three four five", chunk_chars=4))
    pieces = [chunk.choices[0].delta.content for chunk in
              client.chat.completions.create(model="m", messages=USER, stream=True) if chunk.choices]
    expected = ["one ", "two ", "thre", "e fo", "ur f", "ive"]
    assert pieces == ["", *expected, None]
    [turn] = turns(redis_client, 1)
    assert turn["stream"] is True
    assert turn["response"]["message"]["content"] == "one two three four five"
    assert turn["tokens"]["response_token_ids"] == [ord(c) for c in "one two three four five"]
    assert turn["timings"]["ttft_ms"] is not None


def test_stream_is_passed_through_as_it_arrives(client, fake) -> None:
    fake.push(Reply(content="abcdef", chunk_chars=2, chunk_delay_s=0.5))
    start = time.monotonic()
    arrivals = []
    for chunk in client.chat.completions.create(model="m", messages=USER, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 3
    assert arrivals[0] < 0.95 and arrivals[2] > 1.4  # each piece as it comes, not all at the end


def test_tool_calls_accumulated_stream_and_not(client, fake, redis_client) -> None:
    fake.push(Reply(tool_calls=CALLS), Reply(tool_calls=CALLS))
    completion = client.chat.completions.create(model="m", messages=USER, tools=TOOLS)
    assert [c.function.arguments for c in completion.choices[0].message.tool_calls] == [c["arguments"] for c in CALLS]
    chunks = list(client.chat.completions.create(model="m", messages=USER, tools=TOOLS, stream=True))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    expected = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in CALLS]
    records = turns(redis_client, 2)
    assert [r["response"]["message"]["tool_calls"] for r in records] == [expected, expected]
    assert [r["response"]["finish_reason"] for r in records] == ["tool_calls", "tool_calls"]
    assert records[0]["request"]["tools"] == TOOLS


def test_client_that_asks_for_logprobs_keeps_them(client, redis_client) -> None:
    completion = client.chat.completions.create(model="m", messages=USER, logprobs=True)
    assert len(completion.choices[0].logprobs.content) == len("echo: hello there")
    chunks = list(client.chat.completions.create(model="m", messages=USER, logprobs=True, stream=True))
    assert sum(len(c.choices[0].logprobs.content) for c in chunks if c.choices and c.choices[0].logprobs) == 17
    assert all("token_ids" not in (c.choices[0].model_extra or {}) for c in chunks if c.choices)


def test_upstream_without_capture_is_retried_once_and_remembered(start_proxy, redis_client) -> None:
    plain = FakeUpstream(capture=False)
    with serve_in_thread(plain.app) as url:
        proxy = start_proxy(upstream=f"{url}/v1")
        with openai.OpenAI(base_url=f"{proxy}/v1", api_key="k", max_retries=0) as sdk:
            first = sdk.chat.completions.create(model="m", messages=USER)
            second = sdk.chat.completions.create(model="m", messages=USER, stream=True)
            assert first.choices[0].message.content == "echo: hello there"
            assert "".join(c.choices[0].delta.content or "" for c in second if c.choices) == "echo: hello there"
    assert ["return_token_ids" in r["body"] for r in plain.requests] == [True, False, False]
    records = turns(redis_client, 2)
    assert [r["tokens"]["method"] for r in records] == ["none", "none"]


def test_completions_and_models_pass_through(client, fake) -> None:
    completion = client.completions.create(model="m", prompt="abc")
    assert completion.choices[0].text == "echo: abc"
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="m", prompt="abcdef", stream=True))
    assert streamed == "echo: abcdef"
    assert [m.id for m in client.models.list()] == ["fake-model"]
    assert fake.requests[0]["body"] == {"model": "m", "prompt": "abc"}


def test_client_auth_passes_through_unless_an_upstream_key_is_set(client, fake, start_proxy) -> None:
    client.chat.completions.create(model="m", messages=USER)
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-test-key"
    url = start_proxy(upstream_api_key="sk-upstream")
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client", max_retries=0) as sdk:
        sdk.chat.completions.create(model="m", messages=USER)
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-upstream"


def test_end_to_end_client_headers_reach_the_upstream(proxy_url, start_proxy, fake, http) -> None:
    """Organisation, provider-specific and credential headers go on; the proxy's controls do not."""
    sent = {"openai-organization": "org-1", "api-key": "azure-style", "x-title": "my app", "x-session-id": "s1",
            "x-turn-type": "main", "x-nextstate-record": "off", "accept-encoding": "gzip", "cookie": "a=b"}
    for url in (proxy_url, start_proxy(upstream_api_key="sk-upstream")):
        response = http.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": USER}, headers=sent)
        assert response.status_code == 200
    forwarded, replaced = (fake.requests[0]["headers"], fake.requests[1]["headers"])
    assert (forwarded["openai-organization"], forwarded["api-key"], forwarded["x-title"]) == ("org-1", "azure-style",
                                                                                              "my app")
    assert forwarded["accept-encoding"] == "identity"
    assert not {"x-session-id", "x-turn-type", "x-nextstate-record", "cookie"} & forwarded.keys()
    assert replaced["authorization"] == "Bearer sk-upstream" and "api-key" not in replaced
    assert replaced["x-title"] == "my app"


def test_reasoning_content_is_recorded(client, fake, redis_client) -> None:
    fake.push(Reply(content="42", reasoning="think first"), Reply(content="42", reasoning="think first"))
    client.chat.completions.create(model="m", messages=USER)
    list(client.chat.completions.create(model="m", messages=USER, stream=True))
    records = turns(redis_client, 2)
    assert [r["response"]["message"].get("reasoning_content") for r in records] == ["think first", "think first"]


def test_a_session_named_by_user_is_percent_encoded_in_its_header(client, redis_client) -> None:
    """The body's ``user`` names the session; one with characters a header cannot hold is percent-encoded in
    ``x-nextstate-session-id`` (the record keeps it as sent)."""
    raw = client.chat.completions.with_raw_response.create(model="m", messages=USER, user="ユーザー 7\nb")
    assert raw.http_response.status_code == 200
    assert raw.headers["x-nextstate-session-id"] == "user%3A%E3%83%A6%E3%83%BC%E3%82%B6%E3%83%BC%207%0Ab"
    [turn] = turns(redis_client, 1)
    assert turn["session_id"] == "user:ユーザー 7\nb"
    plain = client.chat.completions.with_raw_response.create(model="m", messages=USER, user="alice")
    assert plain.headers["x-nextstate-session-id"] == "user:alice"
