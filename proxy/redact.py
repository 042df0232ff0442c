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

# Each rule runs only when a cheap test finds what it needs (a literal prefix, an "@", a digit): most
# text is prose, and scanning it with the full patterns costs ten times more than serialising the record.
_KEY_PREFIXES = ("sk-", "sk_", "rk_", "pk_", "ghp_", "gho_", "ghs_", "ghu_", "ghr_", "github_pat_", "glpat-", "xox",
                 "hf_", "AKIA", "ASIA", "AIza")
_ASSIGNED = ("password", "passwd", "pwd", "secret", "api_key", "api-key", "apikey", "access_token", "access-token",
             "accesstoken", "auth_token", "auth-token", "authtoken")
_SECRET_RULES = [
    (("PRIVATE KEY",), re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)")),
    (("Bearer", "Basic"), re.compile(r"(?:Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}")),
    (_KEY_PREFIXES, re.compile(
        r"(?:sk-(?:ant-|proj-|live-|test-)?[A-Za-z0-9_-]{16,}|(?:ghp|gho|ghs|ghu|ghr)_[A-Za-z0-9]{30,}"
        r"|github_pat_[A-Za-z0-9_]{30,}|glpat-[A-Za-z0-9_-]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{30,}"
        r"|(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|(?:rk|sk|pk)_(?:live|test)_[0-9A-Za-z]{16,})")),
    (("eyJ",), re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
]
_ASSIGNMENT = re.compile(
    r"((?i:(?<![A-Za-z0-9])(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)"
    r"\"?\s*[:=]\s*\"?))[^\s\"',;]{6,}"
)
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}")
# No pattern starts with a look-behind (that stops the regex engine from skipping ahead to a possible
# first character); what may not precede a match is checked by ``_bounded`` instead.
_PHONE = re.compile(r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){2,4}(?!\w)|\+\d{8,15}(?!\w)")
_CARD = re.compile(r"\d(?:[ -]?\d){12,18}(?![\d-])")
_TOKEN = re.compile(r"[A-Za-z0-9_+/=-]{32,}")
_DIGITS = re.compile(r"\d[\d\s().-]{7}")  # what any phone or card number starts with
_LONG_WORD = re.compile(r"[A-Za-z0-9_+/=-]{32}")


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _preceded(match: re.Match[str], chars: str) -> bool:
    start = match.start()
    return start > 0 and match.string[start - 1] in chars


_WORD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


def _key(match: re.Match[str]) -> str:
    return match.group() if _preceded(match, _WORD + "-") else "[REDACTED:secret]"


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group())
    if _preceded(match, "0123456789-") or not (13 <= len(digits) <= 19 and luhn_valid(digits)):
        return match.group()
    return "[REDACTED:card]"


def _phone(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return "[REDACTED:phone]" if 9 <= digits <= 15 and not _preceded(match, _WORD + "+") else match.group()


def _token(match: re.Match[str]) -> str:
    text = match.group()
    mixed = any(c.isdigit() for c in text) and any(c.isalpha() for c in text)
    return "[REDACTED:token]" if mixed and not _preceded(match, _WORD + "+/=-") else text


def _secrets(text: str) -> str:
    for needles, pattern in _SECRET_RULES:
        if any(n in text for n in needles):
            text = pattern.sub(_key, text)
    lowered = text.lower()
    if any(n in lowered for n in _ASSIGNED):
        text = _ASSIGNMENT.sub(r"\1[REDACTED:secret]", text)  # the name stays: "password=[REDACTED:secret]"
    return text


def _only_if(test: Callable[[str], object], pattern: re.Pattern[str],
             replacement: Callable[[re.Match[str]], str] | str) -> Callable[[str], str]:
    return lambda text: pattern.sub(replacement, text) if test(text) else text


# applied in this order: secrets first (a key may look like a token), cards before phones (a grouped card
# number also looks like a phone number)
_RULES: dict[str, Callable[[str], str]] = {
    "secrets": _secrets,
    "card": _only_if(_DIGITS.search, _CARD, _card),
    "email": _only_if(lambda t: "@" in t, _EMAIL, "[REDACTED:email]"),
    "phone": _only_if(_DIGITS.search, _PHONE, _phone),
    "token": _only_if(_LONG_WORD.search, _TOKEN, _token),
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

    def __init__(self, kinds: str = DEFAULT, hook: str | Callable[[str], str] | None = None,
                 remember: int = 4096) -> None:
        chosen = {k.strip().lower() for k in kinds.split(",") if k.strip()} - {"none"}
        unknown = chosen - set(KINDS)
        if unknown:
            raise RedactionConfigError(f"unknown redaction kinds {sorted(unknown)} (known: {', '.join(KINDS)}, none)")
        self.rules = [rule for kind, rule in _RULES.items() if kind in chosen]
        self.hook = load_hook(hook) if isinstance(hook, str) else hook
        self.remember = remember
        self._seen: dict[str, str] = {}
        """Recently scrubbed texts and their result (insertion order = age)."""

    @property
    def active(self) -> bool:
        return bool(self.rules) or self.hook is not None

    def text(self, value: str) -> str:
        # a conversation sends its whole history with every request: each message is scrubbed once
        if (known := self._seen.get(value)) is not None:
            return known
        scrubbed = value
        for rule in self.rules:
            scrubbed = rule(scrubbed)
        if self.hook is not None:
            scrubbed = self.hook(scrubbed)
        if len(value) >= 64:  # short texts cost less to scrub than to remember
            if len(self._seen) >= self.remember:
                self._seen.pop(next(iter(self._seen)))  # the oldest first
            self._seen[value] = scrubbed
        return scrubbed

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
