"""Rebuild the assistant turn from a completion or from its SSE chunks (accumulated on the side).

``SSESplitter`` cuts a byte stream into complete SSE events whatever the network chunking;
``Accumulator`` merges ``chat.completion.chunk`` deltas of choice 0: content, reasoning content,
tool calls by index, finish_reason, usage, and the captured token ids and logprobs.
"""

from __future__ import annotations

from typing import Any

from proxy import fastjson
from proxy.capture import chosen_logprobs
from proxy.records import TokenCapture, TurnResponse


class SSESplitter:
    """Split bytes into complete SSE events (each returned without its blank-line terminator)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        if b"\r" in self._buffer:  # CRLF line ends, possibly split across reads
            self._buffer = self._buffer.replace(b"\r\n", b"\n")
        if b"\n\n" not in self._buffer:
            return []
        *events, self._buffer = self._buffer.split(b"\n\n")
        return [event for event in events if event.strip()]

    def rest(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest


def event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` payload of one SSE event (None when it has none)."""
    lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


class Accumulator:
    """Merge stream chunks (or one full completion) into a TurnResponse and a TokenCapture."""

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.prompt_token_ids: list[int] | None = None
        self.response_token_ids: list[int] | None = None
        self.logprobs: list[float] | None = None
        self.saw_choice = False

    def feed_sse(self, raw: bytes) -> None:
        splitter = SSESplitter()
        for event in [*splitter.feed(raw), splitter.rest()]:
            data = event_data(event)
            if data is None or data.strip() == b"[DONE]":
                continue
            try:
                self.feed_chunk(fastjson.loads(data))
            except ValueError:
                continue

    def _tokens(self, source: dict[str, Any], choice: dict[str, Any]) -> None:
        if isinstance(source.get("prompt_token_ids"), list) and self.prompt_token_ids is None:
            self.prompt_token_ids = [int(t) for t in source["prompt_token_ids"]]
        if isinstance(choice.get("token_ids"), list):
            self.response_token_ids = (self.response_token_ids or []) + [int(t) for t in choice["token_ids"]]
        logprobs = chosen_logprobs(choice)
        if logprobs is not None:
            self.logprobs = (self.logprobs or []) + logprobs

    def feed_chunk(self, chunk: dict[str, Any]) -> None:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("prompt_token_ids"), list) and self.prompt_token_ids is None:
            self.prompt_token_ids = [int(t) for t in chunk["prompt_token_ids"]]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            self.saw_choice = True
            self._tokens(chunk, choice)
            delta = choice.get("delta") or {}
            if delta.get("role"):
                self.role = delta["role"]
            if delta.get("content"):
                self.content.append(delta["content"])
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                self.reasoning.append(reasoning)
            for call in delta.get("tool_calls") or ():
                self._merge_tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def _merge_tool_call(self, call: dict[str, Any]) -> None:
        slot = self.tool_calls.setdefault(
            int(call.get("index", len(self.tool_calls))),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            slot["function"]["name"] += function["name"]
        if function.get("arguments"):
            slot["function"]["arguments"] += function["arguments"]

    def feed_completion(self, completion: dict[str, Any]) -> None:
        if isinstance(completion.get("usage"), dict):
            self.usage = completion["usage"]
        for choice in completion.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            self.saw_choice = True
            self._tokens(completion, choice)
            message = choice.get("message") or {}
            self.role = message.get("role") or "assistant"
            if message.get("content"):
                self.content.append(message["content"])
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            if reasoning:
                self.reasoning.append(reasoning)
            for index, call in enumerate(message.get("tool_calls") or ()):
                self._merge_tool_call({"index": index, **call})
            self.finish_reason = choice.get("finish_reason")

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": "".join(self.content) if self.content else None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        return message

    def response(self) -> TurnResponse:
        return TurnResponse(message=self.message(), finish_reason=self.finish_reason, usage=self.usage)

    def tokens(self) -> TokenCapture:
        if self.prompt_token_ids is None or self.response_token_ids is None:
            return TokenCapture(method="none")
        logprobs = self.logprobs if self.logprobs and len(self.logprobs) == len(self.response_token_ids) else None
        return TokenCapture(
            method="captured",
            prompt_token_ids=self.prompt_token_ids,
            response_token_ids=self.response_token_ids,
            response_logprobs=logprobs,
        )
