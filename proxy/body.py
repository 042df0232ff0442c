"""A request body as the proxy takes it: read within a byte bound, decoded, parsed, held to the limits.

Every limit answers an OpenAI-shaped 4xx (413 for size, 400 for shape): a body past ``max_body_bytes``
as declared, as sent or once decoded; JSON nested deeper than ``max_json_depth``; more messages, input
items or tools than allowed, or a message longer than ``max_message_chars`` characters.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive

from proxy import fastjson
from proxy.errors import BadRequest, BodyTooLarge, UnsupportedEncoding


class ClientGone(Exception):
    """The client closed its connection before its request body had arrived (nothing to answer)."""


@dataclass(frozen=True)
class Limits:
    """What one request body may hold (from the proxy's settings)."""

    body_bytes: int
    """Largest body, as sent and once decoded."""
    json_depth: int = 64
    """Deepest nesting of arrays and objects."""
    messages: int = 4096
    """Most chat messages (or Responses input items) in one request."""
    message_chars: int = 4_000_000
    """Longest text of one message (all its text parts together)."""
    tools: int = 512
    """Most tools one request may offer."""


async def receive_body(receive: Receive, declared: bytes | str | None, limit: int) -> bytes:
    """The request body from ASGI ``receive``, refused with 413 past ``limit`` bytes (declared or sent)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is larger than {limit} bytes")
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):  # the usual case: the whole body in one message
        if message["type"] == "http.disconnect":
            raise ClientGone
        if len(body) > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes")
        return body
    parts, size = [body], len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes")
        parts.append(part)
    return b"".join(parts)


def decode_body(raw: bytes, encoding: str, limit: int) -> bytes:
    """A request body sent with ``Content-Encoding`` (gzip or deflate), decoded; still at most ``limit`` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedEncoding(f"request bodies encoded as {encoding!r} are not supported (gzip, deflate)")
    # gzip has its header; deflate is zlib-wrapped by the standard, raw from some clients
    attempts = (16 + zlib.MAX_WBITS,) if encoding != "deflate" else (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    for wbits in attempts:
        decoder = zlib.decompressobj(wbits)
        try:
            data = decoder.decompress(raw, limit + 1)
        except zlib.error:
            continue
        if len(data) > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes once decoded")
        if decoder.eof:
            return data
    raise BadRequest(f"request body is not valid {encoding} data")


def depth_exceeds(obj: Any, limit: int) -> bool:
    """Is ``obj`` nested deeper than ``limit`` arrays and objects? (Iterative: no recursion limit to hit.)"""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_json_object(raw: bytes, max_depth: int = 64) -> dict[str, Any]:
    """``raw`` as a JSON object, nested at most ``max_depth`` deep (400 otherwise)."""
    try:
        body = fastjson.loads(raw)
    except RecursionError as exc:  # the standard library's fallback on a body nested past its stack
        raise BadRequest(f"request body is nested deeper than {max_depth} levels", code="json_too_deep") from exc
    except ValueError as exc:
        message = str(exc)
        if "recursion" in message.lower():  # orjson's own depth limit
            raise BadRequest(f"request body is nested deeper than {max_depth} levels", code="json_too_deep") from exc
        raise BadRequest(f"request body is not valid JSON: {message}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    # a body with fewer brackets than the limit cannot be nested past it: most bodies skip the walk
    if raw.count(b"[") + raw.count(b"{") > max_depth and depth_exceeds(body, max_depth):
        raise BadRequest(f"request body is nested deeper than {max_depth} levels", code="json_too_deep")
    return body


def text_chars(content: Any) -> int:
    """Characters of text in a message's ``content`` (a string, or a list of parts)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(part.get("text") or "") if isinstance(part, dict) and isinstance(part.get("text"), str)
                   else 0 for part in content)
    return 0


def check_model(body: dict[str, Any]) -> None:
    """``model`` (what routing reads first) is a string when given."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")


def check_tools(body: dict[str, Any], limits: Limits) -> None:
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or len(tools) > limits.tools):
        raise BadRequest(f"'tools' must be an array of at most {limits.tools} tools", param="tools",
                         code="too_many_tools" if isinstance(tools, list) else None)


def check_messages(messages: list[Any], limits: Limits, param: str = "messages") -> None:
    """At most ``limits.messages`` messages, none longer than ``limits.message_chars`` characters."""
    if len(messages) > limits.messages:
        raise BadRequest(f"'{param}' holds {len(messages)} items; at most {limits.messages} are accepted",
                         param=param, code="too_many_messages")
    for index, message in enumerate(messages):
        if isinstance(message, dict) and text_chars(message.get("content")) > limits.message_chars:
            raise BadRequest(f"{param}[{index}] is longer than {limits.message_chars} characters",
                             param=f"{param}.[{index}].content", code="message_too_long")


def parse_chat(raw: bytes, limits: Limits | None = None) -> dict[str, Any]:
    """A chat completions request: a JSON object with a non-empty ``messages`` array, within ``limits``."""
    limits = limits or Limits(body_bytes=len(raw))
    body = parse_json_object(raw, limits.json_depth)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array of messages", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{index}] must be an object with a 'role'", param=f"messages.[{index}]")
    check_messages(messages, limits)
    check_tools(body, limits)
    check_model(body)
    return body
