"""The Responses API's items as chat messages, so its turns are recorded, linked and learned from as chat turns are.

One conversion serves both directions a conversation takes: the request's input items, and the
response's output items, which a client that keeps its own history sends back as input. So the reply
recorded for a turn and the same reply found in the next request's history have the same digest.
Kept: text (input, output, refusals), images by URL, function calls and their outputs. Not kept:
reasoning items, references to stored items, the upstream's built-in tools (web search, files...).
"""

from __future__ import annotations

from typing import Any

from proxy import fastjson
from proxy.accumulate import SSESplitter, event_data

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
# a streamed response ends with one of these, carrying the whole response
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})
_FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}
_FINISHED = frozenset({"completed", "incomplete"})


def _content(content: Any) -> str | list[dict[str, Any]] | None:
    """Chat content of an item's content: a string when it is all text, else chat content parts."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError("an item's content must be a string or a list of content parts")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _text(content: Any) -> str:
    converted = _content(content)
    if isinstance(converted, list):
        return "".join(p.get("text", "") for p in converted)
    return converted or ""


def _assistant(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message the next assistant-side item belongs to: consecutive ones make one message."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]
    messages.append({"role": "assistant", "content": None})
    return messages[-1]


def to_messages(items: Any) -> list[dict[str, Any]]:
    """Chat messages of Responses API input or output items (a string is one user message).

    Raises ``ValueError`` for what is not a string or a list of items.
    """
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise ValueError("input must be a string or a list of items")
    messages: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("each input item must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str):
                raise ValueError("a message item needs a role")
            if role == "assistant":
                message = _assistant(messages)
                if text := _text(item.get("content")):
                    message["content"] = (message["content"] or "") + text
            else:
                messages.append({"role": "system" if role == "developer" else role,
                                 "content": _content(item.get("content"))})
        elif kind == "function_call":
            call = {"id": str(item.get("call_id") or item.get("id") or ""), "type": "function",
                    "function": {"name": str(item.get("name") or ""), "arguments": str(item.get("arguments") or "")}}
            _assistant(messages).setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id") or ""),
                             "content": output if isinstance(output, str) else _text(output)})
    return messages


def chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    """The request's function tools in the chat shape (the upstream's built-in tools are left out)."""
    if not isinstance(tools, list):
        return None
    converted = [
        {"type": "function", "function": {k: tool[k] for k in ("name", "description", "parameters") if k in tool}}
        for tool in tools if isinstance(tool, dict) and tool.get("type") == "function" and tool.get("name")
    ]
    return converted or None


def completion(response: dict[str, Any]) -> dict[str, Any] | None:
    """A finished response object as a chat completion with one choice (what the recorder reads); None
    for one still running (a background response answers at once, ``queued``), failed or cancelled."""
    if response.get("status", "completed") not in _FINISHED:
        return None
    replies = [m for m in to_messages(response.get("output") or []) if m["role"] == "assistant"]
    message = replies[0] if replies else {"role": "assistant", "content": None}
    details = response.get("incomplete_details") or {}
    if message.get("tool_calls"):
        finish = "tool_calls"
    elif response.get("status") == "incomplete":
        finish = _FINISH.get(details.get("reason") if isinstance(details, dict) else None, "length")
    else:
        finish = "stop"
    usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
    return {
        "id": response.get("id"), "object": "chat.completion", "created": response.get("created_at"),
        "model": response.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens"),
                  "total_tokens": usage.get("total_tokens")} if usage else None,
    }


def final_response(stream: bytes) -> dict[str, Any] | None:
    """The whole response carried by a streamed response's last event (None when it never completed)."""
    splitter = SSESplitter()
    found = None
    for event in [*splitter.feed(stream), splitter.rest()]:
        data = event_data(event)
        if not data:
            continue
        try:
            payload = fastjson.loads(data)
        except ValueError:
            continue
        if isinstance(payload, dict) and payload.get("type") in _FINAL_EVENTS and isinstance(payload.get("response"), dict):
            found = payload["response"]
    return found
