"""Forwarded bytes, stripping of capture fields, and rebuilding a turn from SSE chunks."""

from __future__ import annotations

import json

import pytest

from proxy.accumulate import Accumulator, SSESplitter, event_data
from proxy.capture import Wants, chosen_logprobs, client_wants, forward_body, strip

RAW = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.2}  \n'


def test_body_is_forwarded_as_is_when_nothing_changes() -> None:
    body = json.loads(RAW)
    assert forward_body(RAW, body, model=None, capture=False) is RAW
    assert forward_body(RAW, body, model="m", capture=False) is RAW


def test_capture_fields_are_spliced_without_reserialising() -> None:
    body = json.loads(RAW)
    out = forward_body(RAW, body, model=None, capture=True)
    assert out.startswith(RAW.rstrip()[:-1])  # the client's bytes, untouched
    assert json.loads(out) == {**body, "logprobs": True, "return_token_ids": True}


@pytest.mark.parametrize(
    ("extra", "model", "expected"),
    [
        ({"logprobs": False}, None, {"logprobs": True, "return_token_ids": True}),
        ({}, "tiny@v2", {"model": "tiny@v2", "logprobs": True, "return_token_ids": True}),
        ({"logprobs": True, "return_token_ids": True}, None, {}),
    ],
)
def test_rewrites(extra, model, expected) -> None:
    body = {**json.loads(RAW), **extra}
    raw = json.dumps(body).encode()
    assert json.loads(forward_body(raw, body, model=model, capture=True)) == {**body, **expected}


def test_strip_removes_only_what_the_client_did_not_ask_for() -> None:
    completion = {"prompt_token_ids": [1], "choices": [{"index": 0, "token_ids": [2], "logprobs": {"content": []}}]}
    assert strip(json.loads(json.dumps(completion)), Wants(False, False)) == {
        "choices": [{"index": 0, "logprobs": None}]}
    assert strip(json.loads(json.dumps(completion)), Wants(True, False)) == {
        "choices": [{"index": 0, "logprobs": {"content": []}}]}
    assert strip(json.loads(json.dumps(completion)), Wants(False, True)) == {
        "prompt_token_ids": [1], "choices": [{"index": 0, "token_ids": [2], "logprobs": None}]}
    assert client_wants({"logprobs": True}) == Wants(True, False)


def test_sse_splitter_handles_any_chunking() -> None:
    stream = b"data: {\"a\": 1}\n\ndata: {\"a\": 2}\r\n\r\n: comment\n\ndata: [DONE]\n\n"
    for size in (1, 3, 7, len(stream)):
        splitter = SSESplitter()
        events = []
        for start in range(0, len(stream), size):
            events += splitter.feed(stream[start:start + size])
        assert [event_data(e) for e in events] == [b'{"a": 1}', b'{"a": 2}', None, b"[DONE]"]


def _chunk(delta: dict, **extra) -> bytes:
    data = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, **extra}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def test_accumulator_merges_content_reasoning_tool_calls_and_tokens() -> None:
    first = json.loads(_chunk({"role": "assistant", "content": ""}, token_ids=[])[6:])
    first["prompt_token_ids"] = [7, 8]
    raw = b"".join([
        b"data: " + json.dumps(first).encode() + b"\n\n",
        _chunk({"reasoning_content": "think"}),
        _chunk({"content": "Hel"}, token_ids=[1, 2], logprobs={"content": [{"logprob": -0.1}, {"logprob": -0.2}]}),
        _chunk({"content": "lo"}, token_ids=[3], logprobs={"content": [{"logprob": -0.3}]}),
        _chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\""}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
        _chunk({}, finish_reason="tool_calls"),
        b'data: {"choices": [], "usage": {"total_tokens": 5}}\n\n',
        b"data: [DONE]\n\n",
    ])
    accumulator = Accumulator()
    accumulator.feed_sse(raw)
    assert accumulator.message() == {
        "role": "assistant", "content": "Hello", "reasoning_content": "think",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ],
    }
    response, tokens = accumulator.response(), accumulator.tokens()
    assert (response.finish_reason, response.usage) == ("tool_calls", {"total_tokens": 5})
    assert (tokens.method, tokens.prompt_token_ids, tokens.response_token_ids) == ("captured", [7, 8], [1, 2, 3])
    assert tokens.response_logprobs == [-0.1, -0.2, -0.3]


def test_accumulator_without_token_ids_records_method_none() -> None:
    accumulator = Accumulator()
    accumulator.feed_completion({"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"},
                                              "finish_reason": "stop"}]})
    assert accumulator.tokens().method == "none"
    assert accumulator.message() == {"role": "assistant", "content": "x"}


def test_strip_copy_leaves_the_original_whole() -> None:
    from proxy.capture import strip_copy

    completion = {"prompt_token_ids": [1], "choices": [{"index": 0, "token_ids": [2], "logprobs": {"content": []}}]}
    original = json.loads(json.dumps(completion))
    assert strip_copy(completion, Wants(False, False)) == {"choices": [{"index": 0, "logprobs": None}]}
    assert completion == original


def test_a_streamed_token_without_a_logprob_is_recorded_as_missing_not_as_certain() -> None:
    accumulator = Accumulator()
    accumulator.feed_chunk({"prompt_token_ids": [7], "choices": [{"index": 0, "delta": {"content": "a"}, "token_ids": [1],
                                                                  "logprobs": {"content": [{"token": "a", "logprob": -0.5}]}}]})
    accumulator.feed_chunk({"choices": [{"index": 0, "delta": {"content": "b"}, "token_ids": [2],
                                         "logprobs": {"content": [{"token": "b"}]}}]})  # no logprob for this one
    tokens = accumulator.tokens()
    assert (tokens.method, tokens.response_token_ids, tokens.response_logprobs) == ("captured", [1, 2], None)
    assert chosen_logprobs({"logprobs": {"content": [{"logprob": -1}, {"logprob": None}]}}) is None
    assert chosen_logprobs({"logprobs": {"content": [{"logprob": -1}, {"logprob": -2.5}]}}) == [-1.0, -2.5]
