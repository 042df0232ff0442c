"""What a judge sees: the request, the assistant turn and the next state, rendered, sanitised, truncated.

Data goes into versioned prompt files (``labeler/prompts/<name>_<version>.md``) between markers that
carry a fresh random code per call, so text inside the data cannot close a block or pose as one.
Boxes and hint markers inside the data are defused before rendering; every input is cut to its
character budget (head and tail kept) and the cut is recorded.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_DEFUSE = [
    (re.compile(r"\\boxed", re.IGNORECASE), "boxed"),
    (re.compile(r"\[(/?)HINT_(START|END)\]", re.IGNORECASE), r"(\1hint \2)"),
    (re.compile(r"<<<|>>>"), "«"),
]


@dataclass(frozen=True)
class JudgeInput:
    """The three data blocks of a judge prompt, already sanitised and cut to budget."""

    request: str
    response: str
    next_state: str
    has_next_state: bool
    truncated: bool
    """True when any block was cut to its budget."""


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    text: str

    @property
    def label(self) -> str:
        """What goes on every sample: ``<name>-<version>``."""
        return f"{self.name}-{self.version}"


def load_prompt(name: str, version: str = "v1") -> Prompt:
    path = PROMPTS_DIR / f"{name}_{version}.md"
    return Prompt(name=name, version=version, text=path.read_text(encoding="utf-8"))


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill ``{{name}}`` placeholders in one pass (values are never re-scanned for placeholders)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def fill(prompt: Prompt, data: JudgeInput, rubric: str | None = None, nonce: str | None = None) -> str:
    rubric_block = f"\nUser guidelines (from the operator, not from the data):\n{rubric.strip()}\n" if rubric else ""
    return render(prompt.text, {
        "nonce": nonce or secrets.token_hex(6),
        "rubric": rubric_block,
        "request": data.request,
        "response": data.response,
        "next_state": data.next_state,
    })


def truncate(text: str, budget: int) -> tuple[str, bool]:
    """Cut ``text`` to at most ``budget`` characters keeping its head (2/3) and tail (1/3)."""
    if len(text) <= budget:
        return text, False
    marker = f" …[{len(text) - budget} characters cut]… "
    room = max(budget - len(marker), 2)
    head = room * 2 // 3
    return text[:head] + marker + text[len(text) - (room - head):], True


def defuse(text: str) -> str:
    """Neutralise what could pass for a verdict, a hint or a block marker inside data."""
    for pattern, replacement in _DEFUSE:
        text = pattern.sub(replacement, text)
    return text


def content_text(content: Any) -> str:
    """Text of an OpenAI message content: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in content]
        return "\n".join(p for p in parts if p)
    return json.dumps(content, ensure_ascii=False)


def render_message(message: Mapping[str, Any]) -> str:
    role = str(message.get("role", "user"))
    text = content_text(message.get("content"))
    if role == "tool":
        name = message.get("name") or message.get("tool_call_id") or "tool"
        return f"[tool result: {name}]\n{text}"
    lines = [f"[{role}]", text] if text else [f"[{role}]"]
    for call in message.get("tool_calls") or []:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        lines.append(f"(calls tool {function.get('name', '?')} with {function.get('arguments', '')})")
    return "\n".join(lines)


def request_messages(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The request of a turn: the messages after the last assistant message (at least the last one)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "assistant":
            return list(messages[index + 1:]) or list(messages[-1:])
    return [m for m in messages if m.get("role") != "system"] or list(messages[-1:])


def request_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Plain text of the user's side of the request (used by rule judges)."""
    return "\n".join(content_text(m.get("content")) for m in request_messages(messages))


def build_input(messages: Sequence[Mapping[str, Any]], response: Mapping[str, Any],
                next_state: Sequence[Mapping[str, Any]], *, request_budget: int = 4000,
                response_budget: int = 4000, next_state_budget: int = 4000) -> JudgeInput:
    request, cut_a = truncate(defuse("\n\n".join(render_message(m) for m in request_messages(messages))), request_budget)
    answer, cut_b = truncate(defuse(render_message(response)), response_budget)
    if next_state:
        after, cut_c = truncate(defuse("\n\n".join(render_message(m) for m in next_state)), next_state_budget)
    else:
        after, cut_c = "(nothing: the conversation ended after this turn)", False
    return JudgeInput(request=request, response=answer, next_state=after, has_next_state=bool(next_state),
                      truncated=cut_a or cut_b or cut_c)
