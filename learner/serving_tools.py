"""Tool calls in the policy server's answers, read out of the generated text as vLLM's ``hermes`` parser
reads them (``--enable-auto-tool-choice --tool-call-parser hermes``).

A model that calls a tool writes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the
form Qwen, Hermes and the built-in model's chat template ask for); a list of such objects inside one
pair of tags is read as several calls. What the answer says outside the tags is its content (the
whitespace that lays out the tags aside), and an
answer that calls a tool and says nothing else has content ``null`` and finish reason
``tool_calls``, as vLLM answers. A block that is not such JSON stays in the content, word for word:
nothing the model wrote is dropped. A block the answer leaves open at its end (cut by ``max_tokens``
or the end-of-turn token) is read to the end.

The same parser reads a whole answer and a stream: ``feed`` takes each piece of text as it is
generated and returns what can already be sent, holding back only a tail that may still become an
opening tag, so a streamed answer and a whole one yield the same content and the same calls.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


@dataclass(frozen=True)
class ToolCall:
    """One parsed call; ``arguments`` is the JSON text OpenAI's format carries."""

    id: str
    name: str
    arguments: str

    def message(self) -> dict[str, Any]:
        """The call as it appears in a chat completion's ``message.tool_calls``."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def delta(self, index: int) -> dict[str, Any]:
        """The call as one streamed ``delta.tool_calls`` entry (name and arguments whole)."""
        return {"index": index, **self.message()}


def new_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def _calls(block: str) -> list[ToolCall] | None:
    """The calls one tag pair holds, or None when it is not a call (then it is content)."""
    try:
        parsed = json.loads(block)
    except json.JSONDecodeError:
        return None
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        calls.append(ToolCall(new_call_id(), item["name"], text))
    return calls or None


def _opening_tail(text: str) -> int:
    """Length of the longest end of ``text`` that is the start of an opening tag (held back)."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0


@dataclass
class ToolCallParser:
    """Splits generated text into content and tool calls, piece by piece.

    Whitespace next to a call's tags is layout, not content, so it is held back until the next text
    shows which it is; an answer with no call comes out exactly as written."""

    calls: list[ToolCall] = field(default_factory=list)
    _pending: str = ""  # text not yet sent: a possible opening tag, trailing whitespace, an open block
    _inside: bool = False
    _gap: str = ""  # whitespace before the open block (content again if the block is not a call)
    _after_call: bool = False  # the whitespace that follows a call is dropped

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Content that can be sent now and the calls completed by this piece."""
        self._pending += text
        content, done = "", []
        while True:
            if self._inside:
                end = self._pending.find(CLOSE)
                if end < 0:
                    break
                content += self._close(self._pending[:end], CLOSE, done)
                self._pending = self._pending[end + len(CLOSE):]
                continue
            start = self._pending.find(OPEN)
            if start >= 0:
                before = self._text(self._pending[:start])
                body = before.rstrip()
                content, self._gap = content + body, before[len(body):]
                self._pending, self._inside = self._pending[start + len(OPEN):], True
                continue
            cut = len(self._pending) - _opening_tail(self._pending)
            ready = self._text(self._pending[:cut])
            body = ready.rstrip()
            content += body
            self._pending = ready[len(body):] + self._pending[cut:]
            if body:
                self._after_call = False
            break
        return content, done

    def read(self, text: str, last: bool = False) -> tuple[str, list[ToolCall]]:
        """``feed``, and ``finish`` too when ``text`` is the answer's last piece."""
        content, calls = self.feed(text)
        if last:
            rest, more = self.finish()
            content, calls = content + rest, calls + more
        return content, calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """What is left at the end of the answer: a block left open is read to the end."""
        done: list[ToolCall] = []
        if self._inside:
            content = self._close(self._pending, "", done)
        else:
            content = self._text(self._pending)
            content = "" if self.calls and not content.strip() else content
        self._pending = ""
        return content, done

    def _text(self, segment: str) -> str:
        return segment.lstrip() if self._after_call else segment

    def _close(self, block: str, closing: str, done: list[ToolCall]) -> str:
        """Ends the open block: its calls, or the block word for word as content."""
        self._inside = False
        gap, self._gap = self._gap, ""
        calls = _calls(block.strip())
        if calls is None:
            self._after_call = False
            return gap + OPEN + block + closing
        done += calls
        self.calls += calls
        self._after_call = True
        return ""


def parse_tool_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """A whole answer's content (None when it only calls tools) and its calls."""
    parser = ToolCallParser()
    content, _ = parser.read(text, last=True)
    if parser.calls and not content.strip():
        return None, parser.calls
    return content, parser.calls


def wants_tool_calls(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None) -> bool:
    """Whether a request's answer is parsed for calls: it offers tools and does not say ``none``."""
    return bool(tools) and tool_choice != "none"
