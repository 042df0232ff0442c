"""The ``embedded`` judge: clear rules, no model, no network — the default of the embedded stack.

Two independent channels vote or abstain, and the votes are tallied like a model's:
  - the user's words: a correction, complaint or sarcasm (16 languages), the request repeated in
    other words, or a corrective directive give -1 — these win over politeness ("thanks, but
    answer in one word" is a correction); approval, or moving on to a new question or task, +1;
  - the tools: a result that reports an error -1, a result +1.
A disagreement between the channels is a tie (0, a hard case). Nothing votes on an empty or
signal-free next state, which gives 0 (observation-only). Directive
sentences of the user ("please answer in one word") become the hint of a -1 turn. Accuracy on the
labeled set in ``labeler/data``: ``python -m labeler.evaluate``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labeler import cues
from labeler.directives import directives, hint_from
from labeler.judges import Verdict
from labeler.prompting import content_text, request_text, truncate
from labeler.settings import LabelerSettings
from labeler.tally import tally

VERSION = "embedded-v1"
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset(["a", "an", "the", "of", "to", "in", "on", "for", "by", "and", "or", "is", "are", "was", "be", "do", "does", "did", "i", "me", "my", "you", "your", "it", "this", "that", "what", "which", "how", "can", "could", "would", "please", "with", "about", "give", "tell", "show", "whats", "its", "from", "at", "as", "just", "quick", "m", "im", "ask", "question", "write", "go", "make", "get", "when", "need", "want", "know", "times", "plus", "minus"])
_NEW_TASK = re.compile(r"^\s*(?:(?:ok(?:ay)?|great|cool|thanks)?[\s,.!]*(?:now|next|and now|then)\b|再写|再来一|写一|给我|もう一つ|"
                       r"another one|one more)", re.IGNORECASE)
_QUESTION = re.compile(r"[?？¿]\s*$|^\s*(?:what|how|why|when|where|who|which|can|could|would|is|are|do|does|should|tell|"
                       r"and|let's|next|qu|quel|wie|was|qué|cómo|как|что|что)\b", re.IGNORECASE)


_INJECTION = re.compile(
    r"\\boxed|\bboxed\s*\{|ignor\w* (?:all |any |the )*(?:previous|prior|above|earlier|preceding|précédentes|vorherigen|anteriores|precedenti)|"
    r"<<<|>>>|\[/?hint_|^\s*(?:system|assistant|judge)\s*:|you are (?:now )?(?:the|a) (?:judge|grader)|"
    r"忽略|無視|игнорируй|指令|instructions? (?:to|for) the (?:judge|grader)", re.IGNORECASE)
_PIECES = re.compile(r"(?<=[.!?。！？])\s+|\n+|(?<=[。！？])")


def without_injections(text: str) -> str:
    """``text`` without the sentences that address a judge (boxes, fake markers, "ignore previous ...").

    The next state is data: a sentence that tries to steer the judge carries no signal about the
    assistant turn, so it is dropped before any rule reads the text.
    """
    kept = []
    for piece in _PIECES.split(text):
        found = _INJECTION.search(piece)
        piece = piece[: found.start()] if found else piece  # what precedes the attack is still the user's
        if piece.strip():
            kept.append(piece)
    return "\n".join(kept)


def _stem(word: str) -> str:
    """A light English stemmer: matching/matches/matched -> match, dictionaries -> dictionary."""
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ed"):
        return word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and re.search(r"(?:s|x|z|ch|sh)es$", word):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


_NUMBERS = {w: str(i) for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"])}


def _tokens(text: str) -> set[str]:
    words = (_NUMBERS.get(w, w) for w in (w.lower() for w in _TOKEN.findall(text)))
    return {_stem(w) for w in words if w not in _STOP}


def similarity(a: str, b: str) -> float:
    """Jaccard overlap of content words (light plural stripping); 0.0 when either is empty."""
    left, right = _tokens(a), _tokens(b)
    if not left or not right:
        return 0.0
    return len(left & right) / len(left | right)


def rephrases(request: str, text: str) -> bool:
    """``text`` asks ``request`` again: it keeps the request's content words, or nearly all of them.

    A question built on the same pattern with another subject ("what noise does a pig make?" after
    "... a bee ...") swaps a content word and is a new question, not a rephrasing.
    """
    asked, said = _tokens(request), _tokens(text)
    if not asked or not said:
        return False
    if not asked - said:  # every content word of the request is asked again
        return True
    if not said - asked:  # a shorter form of the request
        return len(asked & said) / len(asked) >= 2 / 3
    return similarity(request, text) >= 0.75  # both sides have words of their own: a swap, unless tiny


def cue_vote(text: str) -> int | None:
    """Approval +1, correction/complaint/sarcasm -1 (negative wins over praise), else abstain."""
    if not text.strip():
        return None
    if any(p.search(text) for p in cues.SARCASM):
        return -1
    cleaned = cues.NOT_NEGATIVE.sub(" ", text)
    if any(p.search(cleaned) for p in cues.NEGATIVE):
        return -1
    if any(p.search(text) for p in cues.POSITIVE):
        return 1
    return None


_CLAUSES = re.compile(r"(?<=[.!?。！？:])\s+|\n+")


def _asks(request: str) -> list[str]:
    """The request, and each question in it of two content words or more: a message that thanks for
    the last answer and asks the next question ("Cool, thanks! Another one: how many ...?") is asked
    again through its question alone (thanks repeated later are not a rephrasing)."""
    clauses = [c for c in _CLAUSES.split(request) if _QUESTION.search(c) and len(_tokens(c)) >= 2]
    return [request, *clauses] if clauses and clauses != [request] else [request]


def move_vote(request: str, text: str) -> int | None:
    """Rephrased request or corrective directive -1; a new question or task +1; else abstain.

    Each sentence is looked at on its own, so padding around a message cannot hide it.
    """
    pieces = [p for p in _PIECES.split(text) if p.strip()]
    if not pieces:
        return None
    said = [text, *pieces, *(c for c in _CLAUSES.split(text) if c.strip())]
    if any(rephrases(asked, p) for asked in _asks(request) for p in said):
        return -1
    found = directives(text)
    if any(d.corrective for d in found):
        return -1
    if found or _NEW_TASK.search(text) or any(_QUESTION.search(p) and len(_tokens(p)) >= 2 for p in pieces):
        return 1
    return None


def user_vote(request: str, text: str) -> int | None:
    """The user's channel: any negative evidence wins, then any positive one, else abstain."""
    found = [v for v in (cue_vote(text), move_vote(request, text)) if v is not None]
    if -1 in found:
        return -1
    return 1 if 1 in found else None


def tool_vote(results: Sequence[str]) -> int | None:
    """-1 when any tool result reports an error, +1 when all returned something, abstain without tools."""
    if not results:
        return None
    if any(cues.TOOL_ERROR.search(r) for r in results):
        return -1
    return 1 if any(r.strip() for r in results) else None


@dataclass
class EmbeddedJudge:
    """Rule judge; ``budget`` caps the characters of next state it reads (the cut is recorded)."""

    budget: int = 4000
    model: str = "embedded"

    @classmethod
    def from_settings(cls, settings: LabelerSettings) -> EmbeddedJudge:
        return cls(budget=settings.next_state_budget_chars)

    def judge(self, messages: Sequence[Mapping[str, Any]], response: Mapping[str, Any],
              next_state: Sequence[Mapping[str, Any]], extra_next_state: str | None = None) -> Verdict:
        """Rules read only what the user and the tools said; ``extra_next_state`` is ignored."""
        started = time.perf_counter()
        cut = False
        user_texts: list[str] = []
        tool_texts: list[str] = []
        for message in next_state:
            text, was_cut = truncate(content_text(message.get("content")), self.budget)
            cut = cut or was_cut
            if message.get("role") == "tool":
                tool_texts.append(without_injections(text))
            else:
                user_texts.append(text)
        user = without_injections("\n".join(user_texts))
        votes = [v for v in (user_vote(request_text(messages), user), tool_vote(tool_texts)) if v is not None]
        hint = hint_from(user) if tally(votes).reward < 0 else None
        return Verdict(votes=list(votes), hints=[hint], model=self.model, prompt_version=VERSION, truncated=cut,
                       timings={"judge_ms": (time.perf_counter() - started) * 1000})
