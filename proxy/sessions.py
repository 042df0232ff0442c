"""Session identity and turn linking as pure functions (DESIGN decisions 1–2).

A message is reduced to a canonical digest (role, text, tool calls, tool_call_id, name) so that the
history a client sends back can be compared with the reply the proxy served. A new request links to
the previous turn of its session only when its history starts with exactly the previous request's
messages followed by the previous reply; then every user/tool message after that reply is the next
state. Anything else (a retry, an edit) links nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.scopes import GLOBAL

NEXT_STATE_ROLES = frozenset({"user", "tool"})


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep text parts, name the others by type
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                parts.append(part.get("text") if part.get("type") == "text" else json.dumps(part, sort_keys=True))
            else:
                parts.append(str(part))
        return "".join(p or "" for p in parts)
    return json.dumps(content, sort_keys=True)


def _tool_calls(calls: Any) -> list[list[str]]:
    out = []
    for call in calls or []:
        if not isinstance(call, Mapping):
            continue
        function = call.get("function") or {}
        out.append([str(call.get("id") or ""), str(function.get("name") or ""), str(function.get("arguments") or "")])
    return out


def message_digest(message: Mapping[str, Any]) -> str:
    """Canonical content hash of one chat message (ignores fields clients add or drop, e.g. refusal)."""
    canonical = [
        message.get("role") or "",
        _text(message.get("content")),
        _tool_calls(message.get("tool_calls")),
        message.get("tool_call_id") or "",
        message.get("name") or "",
    ]
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()[:32]


def prefix_hash(digests: Sequence[str]) -> str:
    """Hash of a whole message list, from its message digests."""
    return hashlib.sha256("|".join(digests).encode()).hexdigest()[:32]


def opening_fingerprint(messages: Sequence[Mapping[str, Any]]) -> str:
    """Fingerprint of a conversation's opening (messages up to the first user message).

    It stays the same for every request of one conversation, so it serves as a sticky routing key
    when the client names no session.
    """
    digests = []
    for message in messages:
        digests.append(message_digest(message))
        if message.get("role") == "user":
            break
    return prefix_hash(digests)


def last_assistant_index(messages: Sequence[Mapping[str, Any]]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "assistant":
            return index
    return None


def turn_index(messages: Sequence[Mapping[str, Any]]) -> int:
    """Position of a turn in its conversation: the number of assistant replies before it."""
    return sum(1 for message in messages if message.get("role") == "assistant")


@dataclass(frozen=True)
class PreviousTurn:
    """What a session remembers of its last recorded turn."""

    turn_id: str
    n_messages: int
    """Number of messages in that turn's request."""
    prefix_hash: str
    """prefix_hash of that turn's request messages."""
    reply_digest: str
    """message_digest of the reply the client received."""


@dataclass(frozen=True)
class Link:
    linked: bool
    next_state: list[dict[str, Any]]


def link(previous: PreviousTurn, messages: Sequence[Mapping[str, Any]], digests: Sequence[str]) -> Link:
    """Does this request continue ``previous``? If so, its new user/tool messages are the next state."""
    n = previous.n_messages
    if (
        len(messages) <= n
        or digests[n] != previous.reply_digest
        or prefix_hash(digests[:n]) != previous.prefix_hash
    ):
        return Link(False, [])
    next_state = [dict(m) for m in messages[n + 1 :] if m.get("role") in NEXT_STATE_ROLES]
    return Link(True, next_state)


def session_identity(header: str | None, user: Any, messages: Sequence[Mapping[str, Any]],
                     scope: str = GLOBAL) -> tuple[str, str | None]:
    """(session id or "" when it must be looked up by fingerprint, routing key) for one request.

    ``X-Session-Id`` wins, then the body ``user``; otherwise the session is found through the
    fingerprint of the history up to its last assistant reply (see ``chain_hash``), and the
    conversation's opening is the routing key. A session named in a personal learning ``scope`` is that
    scope's own (``<name>@<scope>``): clients of two scopes that name the same session have two.
    """
    if header:
        session_id = header.strip()[:200]
    elif isinstance(user, str) and user:
        session_id = f"user:{user[:200]}"
    else:
        return "", None
    session_id = session_id if scope == GLOBAL else f"{session_id}@{scope}"
    return session_id, session_id


def chain_hash(digests: Sequence[str], scope: str = GLOBAL) -> str:
    """Key under which a fingerprinted session is found: the hash of request messages + reply, and of the
    learning scope when it is a personal one (the same conversation in two scopes is two sessions)."""
    return prefix_hash(digests if scope == GLOBAL else [f"scope:{scope}", *digests])
