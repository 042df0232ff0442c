"""Directive sentences of a next state, turned into imperative hints for on-policy distillation.

"no, please answer in one word" becomes "Answer in one word."; "I'd like it shorter" becomes
"Make the answer shorter."; a directive in another language is kept as the user wrote it. A
directive is *corrective* when it is about the answer just given (its form, length, language,
content) rather than a new task introduced with "now", "next", "also" or "too".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from labeler.styles import plain_hint

IMPERATIVE_VERBS = frozenset(["answer", "reply", "respond", "use", "write", "give", "keep", "make", "be", "add", "remove", "drop", "include", "avoid", "stop", "try", "format", "explain", "show", "list", "sign", "end", "start", "begin", "translate", "say", "put", "switch", "change", "call", "return", "cut", "shorten", "expand", "limit", "skip", "mention", "cite", "spell", "capitalize", "focus", "stick", "tell", "provide", "speak", "talk", "summarize", "summarise", "rewrite", "rephrase", "correct", "replace", "number", "sort", "name", "omit", "leave", "always", "never", "only", "just", "less", "more", "fewer", "close", "finish", "conclude", "wrap", "structure", "organize", "organise", "bold", "break", "split"])
_EDITS = frozenset({"replace", "change", "remove", "drop", "rename", "swap", "correct", "cut", "shorten", "omit", "fix"})
_USELESS = frozenset({"try", "redo", "retry", "start", "fix", "check"})  # "try again" says nothing concrete
_FILLER = re.compile(
    r"^(?:(?:no+[,.!]|nope|ugh|hmm+|ok(?:ay)?|actually|well|but|and|so|again|please|pls|plz|oh|wait|sorry|thanks|thank you|"
    r"great|perfect|i said|i told you|next time|listen|look|seriously|also|now|next|then)(?:[\s,.:;!-]+|$))+", re.IGNORECASE)
_MOVE_ON = re.compile(r"^(?:ok(?:ay)?[\s,]+)?(?:now|next(?! time)|also|then|and now)\b|\b(?:too|as well)[.!?]*$|\b(?:another one|for my other)\b",
                      re.IGNORECASE)
_MODAL = re.compile(r"^(?:can|could|would|will|can't|couldn't) (?:you|u) (?:please |just )?", re.IGNORECASE)
_WANT = re.compile(r"^i(?:'d| would)? (?:like|want|need|prefer|rather have|rather)(?:ed)?\s+(?:(it|the answer|your answer|answers|the response)\s+)?(.+)$",
                   re.IGNORECASE)
_SHOULD = re.compile(r"\b(?:should|must|needs? to|has to|have to)\b", re.IGNORECASE)
_QUANTITY = re.compile(r"\b(?:one|two|three|four|five|single|\d+)[ -](?:word|sentence|line|paragraph|bullet|item)s?\b",
                       re.IGNORECASE)
_FOREIGN = re.compile(
    r"bitte|por favor|s'il (?:te|vous) pla[iî]t|per favore|пожалуйста|請|请|ください|주세요|lütfen|proszę|réponds|"
    r"responde|antworte|rispondi|responda|\b(?:kürzer|más corto|plus court|più breve)\b", re.IGNORECASE)
_POLITE = re.compile(r"\b(?:please|pls|plz)\b", re.IGNORECASE)
_TRAILING_POLITE = re.compile(r"[\s,]*(?:please|pls|plz|thanks|thank you)\s*[.!?]*$", re.IGNORECASE)
# "just one word next time": the hint says what the corrected answer should have been, not when
_TRAILING_TIME = re.compile(r"[\s,]*(?:next time|from now on|in (?:the )?future|going forward|from here on(?: out)?)\s*[.!?]*$",
                            re.IGNORECASE)
_SENTENCES = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+|;\s+|\s+[—–]\s+")
_CLAUSES = re.compile(r",?\s+but\s+|,\s+|[，、]", re.IGNORECASE)
_QUOTED = re.compile(r"(?<!\w)'[^']+'(?!\w)|\"[^\"]*\"")
_MEANT = re.compile(r"^i (?:meant|mean)\s+(.+)$", re.IGNORECASE)
_ABOUT_ANSWER = re.compile(
    r"\b(?:it|this|that|the answer|your answer|the response|the name|the number|the color|the command|the query|the steps|"
    r"words?|sentences?|lines?|short(?:er)?|long(?:er)?|brief|concise|bullet|list|table|format|lowercase|uppercase|"
    r"letters|caps|capitals|dash(?:es)?|"
    r"formal|casual|tone|jargon|emoji|exclamation|language|french|english|german|spanish|italian|chinese|japanese|"
    r"grams|quantities|rhyme|detail|simpl\w*|instead|max(?:imum)?|only|nothing else|extra|show your work|like i'?m|"
    r"less|fewer|more \w+|chatty|wordy|verbose|result|numbered|sign-?off|sign off|signature|my name|greeting|closing|"
    r"title|emojis?|smileys?|smilies|emoticons?|(?:with|by asking|end on) (?:me )?a question|examples?|summary|tl;?dr|units|"
    r"metric|imperial)\b",
    re.IGNORECASE)


@dataclass(frozen=True)
class Directive:
    hint: str
    """The directive as an imperative sentence ending in a full stop."""
    corrective: bool
    """About the answer just given (a correction), not a new task."""


def _finish(text: str) -> str:
    text = " ".join(text.split()).strip(" ,:;-")
    # "one word, please, next time" and "one word next time, please": courtesy on either side of the time
    text = _TRAILING_TIME.sub("", _TRAILING_POLITE.sub("", text)).rstrip(" ,")
    text = _TRAILING_POLITE.sub("", text).rstrip(" ,")
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    if text[-1] in "?!":
        text = text[:-1]
    return text if text[-1] in ".。！？" else text + "."


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _clauses(sentence: str) -> list[str]:
    """Split on commas and "but", never inside quotes."""
    quoted: list[str] = []

    def hide(match: re.Match[str]) -> str:
        quoted.append(match.group(0))
        return f"\x00{len(quoted) - 1}\x00"

    hidden = _QUOTED.sub(hide, sentence)
    parts = [p for p in _CLAUSES.split(hidden) if p and p.strip()]
    return [re.sub(r"\x00(\d+)\x00", lambda m: quoted[int(m.group(1))], p) for p in parts]


def _imperative(clause: str) -> tuple[str, bool] | None:
    """The clause as an imperative hint and whether its form alone makes it a correction."""
    body = _FILLER.sub("", clause.strip()).strip()
    body = _MODAL.sub("", body)
    if not body:
        return None
    meant = _MEANT.match(body)
    if meant:
        return _finish(f"interpret the request as {meant.group(1)}"), True
    want = _WANT.match(body)
    if want:
        subject, rest = want.group(1), want.group(2)
        if re.match(r"to\b", rest):
            return _finish(f"make it {rest[3:]}" if subject else rest[3:]), True
        if re.match(r"(?:in|as|with|without|using|under|within)\b", rest, re.IGNORECASE):
            return _finish(f"answer {rest}"), True
        if subject or re.match(r"(?:shorter|longer|simpler|more|less|brief|formal|casual)\b", rest, re.IGNORECASE):
            return _finish(f"make the answer {rest}"), True
        return _finish(f"give {rest}"), True
    words = body.split()
    first = words[0].lower().strip(",.!?")
    if first in {"don't", "dont", "do", "never", "stop", "avoid", "no"} and len(words) >= 2:
        if first == "do" and words[1].lower() != "not":
            return None
        if body.endswith("?"):  # "No goodbye?", "Never a summary?": a complaint that something is missing
            return None
        return _finish(body), True
    if first in {"less", "more", "fewer"} and len(words) >= 2:
        return _finish(f"use {_lower_first(body)}"), True
    if first in {"shorter", "longer", "simpler", "briefer"}:
        return _finish(f"make it {_lower_first(body)}"), True
    if first in IMPERATIVE_VERBS and first not in _USELESS and len(words) >= 2:
        # an edit presupposes the answer it edits; "just X" / "only X" restricts it
        return _finish(body), first in _EDITS or first in {"just", "only"}
    if _QUANTITY.search(body) or (_SHOULD.search(body) and _ABOUT_ANSWER.search(body)):
        return _finish(body), True
    if _POLITE.search(clause) and _ABOUT_ANSWER.search(body) and len(words) <= 6:  # "all lowercase, please"
        return _finish(body), True
    return None


def directives(text: str) -> list[Directive]:
    """Directive clauses of a user message, in order, without duplicates."""
    found: list[Directive] = []
    seen: set[str] = set()
    for sentence in _SENTENCES.split(text or ""):
        if not sentence or not sentence.strip():
            continue
        pieces: list[tuple[str, tuple[str, bool] | None]]
        if _FOREIGN.search(sentence):  # kept whole, in the user's language
            pieces = [(sentence, (_finish(_FILLER.sub("", sentence.strip())), True))]
        else:
            pieces = [(clause, _imperative(clause)) for clause in _clauses(sentence)]
        kept = [(clause, hint) for clause, hint in pieces
                if hint is not None and hint[0] and hint[0].lower() not in seen]
        # one corrective clause makes the whole sentence a correction ("don't use X, use Y")
        corrective = not _MOVE_ON.search(sentence) and any(
            by_form or _ABOUT_ANSWER.search(clause) for clause, (_, by_form) in kept)
        for _, (hint, _) in kept:
            seen.add(hint.lower())
            found.append(Directive(hint=hint, corrective=corrective))
    return found


def hint_from(text: str, max_sentences: int = 3) -> str | None:
    """The corrective directives of ``text`` joined into a 1-3 sentence hint (None when there are none).

    A directive that is an answer-style correction in the user's own words becomes the plain instruction
    it means (``labeler.styles``: "drop the capital letters" -> "Answer in lowercase."), so the teacher
    is given an instruction it follows.
    """
    chosen: list[str] = []
    for directive in directives(text):
        hint = plain_hint(directive.hint) if directive.corrective else None
        if hint is not None and hint not in chosen:
            chosen.append(hint)
    return " ".join(chosen[:max_sentences]) or None
