"""Rebuild the assistant turn from a completion or from its SSE chunks (accumulated on the side).

``SSESplitter`` cuts a byte stream into complete SSE events whatever the network chunking;
``Accumulator`` merges ``chat.completion.chunk`` deltas of every choice: content, reasoning content,
tool calls by index, finish_reason, usage, and the captured token ids and logprobs.
"""

from __future__ import annotations

from collections.abc import Iterator
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


class _Choice:
    """What one choice of a completion has said so far."""

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.token_ids: list[int] | None = None
        self.logprobs: list[float] | None = None

    def tokens(self, choice: dict[str, Any]) -> None:
        if isinstance(choice.get("token_ids"), list):
            self.token_ids = (self.token_ids or []) + [int(t) for t in choice["token_ids"]]
        logprobs = chosen_logprobs(choice)
        if logprobs is not None:
            self.logprobs = (self.logprobs or []) + logprobs

    def say(self, part: dict[str, Any]) -> None:
        """Merge a stream delta or a whole message."""
        if part.get("role"):
            self.role = part["role"]
        if part.get("content"):
            self.content.append(part["content"])
        reasoning = part.get("reasoning_content") or part.get("reasoning")
        if reasoning:
            self.reasoning.append(reasoning)

    def merge_tool_call(self, call: dict[str, Any]) -> None:
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

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": "".join(self.content) if self.content else None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        return message


def _index(choice: dict[str, Any]) -> int | None:
    index = choice.get("index", 0)
    return index if isinstance(index, int) and not isinstance(index, bool) and index >= 0 else None


class Accumulator:
    """Merge stream chunks (or one full completion) into a TurnResponse and a TokenCapture per choice.

    A request with ``n > 1`` gets several choices; ``indices`` lists them in order and ``response`` /
    ``tokens`` take the choice index (the lowest one by default).
    """

    def __init__(self) -> None:
        self.choices: dict[int, _Choice] = {}
        self.usage: dict[str, Any] | None = None
        self.prompt_token_ids: list[int] | None = None

    @property
    def saw_choice(self) -> bool:
        return bool(self.choices)

    def indices(self) -> list[int]:
        return sorted(self.choices)

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

    def _choices(self, source: dict[str, Any]) -> Iterator[tuple[_Choice, dict[str, Any]]]:
        """Take what ``source`` says for the whole request, then each of its choices with its tokens merged."""
        if isinstance(source.get("usage"), dict):
            self.usage = source["usage"]
        if isinstance(source.get("prompt_token_ids"), list) and self.prompt_token_ids is None:
            self.prompt_token_ids = [int(t) for t in source["prompt_token_ids"]]
        for raw in source.get("choices") or ():
            if not isinstance(raw, dict) or (index := _index(raw)) is None:
                continue
            choice = self.choices.setdefault(index, _Choice())
            choice.tokens(raw)
            yield choice, raw

    def feed_chunk(self, chunk: dict[str, Any]) -> None:
        for choice, raw in self._choices(chunk):
            delta = raw.get("delta") or {}
            choice.say(delta)
            for call in delta.get("tool_calls") or ():
                choice.merge_tool_call(call)
            if raw.get("finish_reason"):
                choice.finish_reason = raw["finish_reason"]

    def feed_completion(self, completion: dict[str, Any]) -> None:
        for choice, raw in self._choices(completion):
            message = raw.get("message") or {}
            choice.say({"role": "assistant", **message})
            for index, call in enumerate(message.get("tool_calls") or ()):
                choice.merge_tool_call({"index": index, **call})
            choice.finish_reason = raw.get("finish_reason")

    def _pick(self, index: int | None) -> _Choice:
        return self.choices[self.indices()[0] if index is None else index]

    def message(self, index: int | None = None) -> dict[str, Any]:
        return self._pick(index).message()

    def response(self, index: int | None = None) -> TurnResponse:
        choice = self._pick(index)
        # usage covers the whole request; with several choices it is kept on the first one only
        usage = self.usage if index is None or index == self.indices()[0] else None
        return TurnResponse(message=choice.message(), finish_reason=choice.finish_reason, usage=usage)

    def tokens(self, index: int | None = None) -> TokenCapture:
        choice = self._pick(index)
        if self.prompt_token_ids is None or choice.token_ids is None:
            return TokenCapture(method="none")
        logprobs = choice.logprobs if choice.logprobs and len(choice.logprobs) == len(choice.token_ids) else None
        return TokenCapture(
            method="captured",
            prompt_token_ids=self.prompt_token_ids,
            response_token_ids=choice.token_ids,
            response_logprobs=logprobs,
        )
