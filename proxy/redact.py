"""Redaction before storage: secret-like strings (and, on request, personal data) replaced in records.

The recorder passes every entry through ``Redactor.entry`` before it reaches Redis or the spool, so
nothing redacted is ever written. Each match becomes ``[REDACTED:<kind>]``. Kinds (``NEXTSTATE_REDACT``,
comma-separated; default ``secrets``; ``none`` turns redaction off):

- ``secrets`` — private key blocks (``-----BEGIN … PRIVATE KEY-----``…), ``Bearer``/``Basic`` credentials,
  API keys with a known shape (``sk-``/``sk-ant-``/``sk-proj-``, ``ghp_``/``gho_``/``ghs_``/``github_pat_``,
  ``glpat-``, ``xox[abprs]-``, ``hf_``, ``AKIA``/``ASIA`` access key ids, ``AIza`` keys, ``rk_``/``pk_live``),
  JSON web tokens, and ``password=``/``api_key:``/``secret=``-style assignments;
- ``email`` — e-mail addresses;
- ``phone`` — phone numbers written with a ``+`` country code or in a grouped form of 9–15 digits;
- ``card`` — payment card numbers (13–19 digits, spaces or dashes allowed, Luhn checksum valid);
- ``token`` — any other token-like string: 32+ characters of letters, digits and ``_-+/=`` mixing
  letters and digits (hex digests and ids too; off by default for that reason).

``NEXTSTATE_REDACT_HOOK`` names a custom scrubber (``package.module:function`` or
``package.module.function``), a ``str -> str`` applied after the patterns. A turn whose text was changed
loses its captured token ids (they spell the original text); the learner re-tokenizes it.

No library is used: the maintained PII engines (Presidio, scrubadub) need language models downloaded
at run time, and secret scanners (detect-secrets) scan files rather than rewrite strings.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

KINDS = ("secrets", "email", "phone", "card", "token")
DEFAULT = "secrets"

_SECRETS = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"
    r"|(?<![A-Za-z0-9])(?:Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|(?<![A-Za-z0-9_-])(?:sk-(?:ant-|proj-|live-|test-)?[A-Za-z0-9_-]{16,}|(?:ghp|gho|ghs|ghu|ghr)_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,}|glpat-[A-Za-z0-9_-]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{30,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|(?:rk|sk|pk)_(?:live|test)_[0-9A-Za-z]{16,})"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|(?i:(?<![A-Za-z0-9])(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)"
    r"\"?\s*[:=]\s*\"?)[^\s\"',;]{6,}"
)
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){2,4}(?![\w])"
                    r"|(?<![\w+])\+\d{8,15}(?!\w)")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_TOKEN = re.compile(r"(?<![A-Za-z0-9_+/=-])(?=[A-Za-z0-9_+/=-]*\d)(?=[A-Za-z0-9_+/=-]*[A-Za-z])[A-Za-z0-9_+/=-]{32,}")


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group())
    return "[REDACTED:card]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group()


def _phone(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return "[REDACTED:phone]" if 9 <= digits <= 15 else match.group()


# applied in this order: secrets first (a key may look like a token), cards before phones (a grouped card
# number also looks like a phone number)
_RULES: dict[str, tuple[re.Pattern[str], Callable[[re.Match[str]], str] | str]] = {
    "secrets": (_SECRETS, "[REDACTED:secret]"),
    "card": (_CARD, _card),
    "email": (_EMAIL, "[REDACTED:email]"),
    "phone": (_PHONE, _phone),
    "token": (_TOKEN, "[REDACTED:token]"),
}


class RedactionConfigError(ValueError):
    """``NEXTSTATE_REDACT`` or ``NEXTSTATE_REDACT_HOOK`` cannot be used."""


def load_hook(path: str) -> Callable[[str], str]:
    """The function a dotted path names (``pkg.mod:fn`` or ``pkg.mod.fn``)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        hook = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise RedactionConfigError(f"redaction hook {path!r} cannot be imported: {exc}") from exc
    if not callable(hook):
        raise RedactionConfigError(f"redaction hook {path!r} is not callable")
    return hook  # type: ignore[no-any-return]


class Redactor:
    """Scrubs text with the configured kinds and hook; ``entry`` scrubs a recorder entry in place."""

    def __init__(self, kinds: str = DEFAULT, hook: str | Callable[[str], str] | None = None) -> None:
        chosen = {k.strip().lower() for k in kinds.split(",") if k.strip()} - {"none"}
        unknown = chosen - set(KINDS)
        if unknown:
            raise RedactionConfigError(f"unknown redaction kinds {sorted(unknown)} (known: {', '.join(KINDS)}, none)")
        self.rules = [rule for kind, rule in _RULES.items() if kind in chosen]
        self.hook = load_hook(hook) if isinstance(hook, str) else hook

    @property
    def active(self) -> bool:
        return bool(self.rules) or self.hook is not None

    def text(self, value: str) -> str:
        for pattern, replacement in self.rules:
            value = pattern.sub(replacement, value)
        if self.hook is not None:
            value = self.hook(value)
        return value

    def message(self, message: dict[str, Any]) -> bool:
        """Scrub a chat message's text (content, its parts, reasoning, tool-call arguments); True if changed."""
        changed = False
        for field in ("content", "reasoning_content", "reasoning", "refusal"):
            value = message.get(field)
            if isinstance(value, str):
                scrubbed = self.text(value)
                changed |= scrubbed != value
                message[field] = scrubbed
            elif isinstance(value, list):
                for part in value:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        scrubbed = self.text(part["text"])
                        changed |= scrubbed != part["text"]
                        part["text"] = scrubbed
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                scrubbed = self.text(function["arguments"])
                changed |= scrubbed != function["arguments"]
                function["arguments"] = scrubbed
        return changed

    def messages(self, messages: list[Any]) -> bool:
        changed = False
        for message in messages:
            if isinstance(message, dict):
                changed |= self.message(message)
        return changed

    def turn(self, turn: Any) -> bool:
        """Scrub a ``TurnRecord``; a changed turn drops its captured token ids (they spell the raw text)."""
        changed = self.messages(turn.request.messages)
        changed |= self.message(turn.response.message)
        if changed:
            turn.tokens = type(turn.tokens)()
        return changed

    def entry(self, entry: Any) -> int:
        """Scrub a recorder ``Entry`` in place; the number of records changed."""
        if not self.active:
            return 0
        changed = 0
        if entry.turn is not None:
            changed += self.turn(entry.turn)
        for sibling in entry.siblings:
            changed += self.turn(sibling.turn)
        if entry.feedback is not None and isinstance(entry.feedback.comment, str):
            scrubbed = self.text(entry.feedback.comment)
            changed += scrubbed != entry.feedback.comment
            entry.feedback.comment = scrubbed
        if entry.context is not None:
            changed += self.messages(entry.context.messages)
        return changed
