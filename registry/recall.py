"""Recall of the scope's own answers: does a candidate still say what its users accepted? Pure.

The sacred suite holds facts of its own, not the topics a scope's users ask about, so a candidate can
keep those and lose the answers its users rely on (asked for a list about one capital, it lists five
other capitals). The scope's evidence says which answers the user did not dispute: those the user was
content with (``prefer``) and those corrected only in form (an ``avoid`` whose hint is a style,
``labeler.styles``: the user asked for a list, not for another fact).

For each such request the **key word** is the first content word of the accepted answer that the
request itself does not contain, that the stable version's own answer to the same request also says,
and that is not common to the scope's accepted answers (in more than a quarter of them: "sure",
"city", a sign-off). Which word carries an answer is not known; the first one both the accepted
answer and stable say is, on short questions, the answer itself ("Paris", "cold"), and a change of
form (a list, lowercase, one word, more detail) keeps it. The gate samples more answers from stable
and as many from the candidate (two each by default), counts the answers that still contain their key
word, and fails a drop judged like a sacred case (``registry.verdict``: tolerance, then a one-sided Fisher
exact test over the answers). Two answers of one request are not independent trials, so the test is
somewhat keener than its nominal level; the tolerance stands in front of it. With one answer each, a
drop from 9 of 9 to 6 of 9 was within chance (p = 0.10) on a real run; with two, the same share is not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labeler.prompting import content_text
from labeler.records import SampleRecord
from labeler.styles import content_words, style_family, words

COMMON_SHARE = 0.25
"""A word in more than this share of the scope's accepted answers (and in at least three) is no key."""


@dataclass(frozen=True)
class RecallRequest:
    """One request of the scope whose answer the user did not dispute."""

    messages: list[dict[str, Any]]
    question: str
    """The text of the last user message."""
    accepted: str
    """The text of the answer the user accepted (or corrected only in form)."""


def undisputed(sample: SampleRecord) -> bool:
    """Whether the user accepted the substance of the sample's answer: content with it, or asking only for
    another form."""
    if sample.cls == "prefer":
        return True
    return sample.cls == "avoid" and bool(sample.hint) and style_family(sample.hint or "") is not None


def recall_request(sample: SampleRecord) -> RecallRequest | None:
    """The sample as a plain text request and its accepted answer; None when it is not one (a tool call or a
    tool result, no text, tools offered, or a substance the user disputed)."""
    if not undisputed(sample) or sample.tools or not sample.messages:
        return None
    last = sample.messages[-1]
    if last.get("role") != "user" or sample.response.get("tool_calls"):
        return None
    question, accepted = content_text(last.get("content")), content_text(sample.response.get("content"))
    if not question.strip() or not accepted.strip():
        return None
    return RecallRequest(list(sample.messages), question, accepted)


def novel_words(answer: str, question: str) -> list[str]:
    """The content words of ``answer`` that ``question`` does not contain, lower-cased, in order, once each."""
    said, asked = content_words(answer), content_words(question)
    return [w for w in dict.fromkeys(word.lower() for word in words(answer)) if w in said and w not in asked]


def common_words(requests: Sequence[RecallRequest]) -> set[str]:
    """Words in more than ``COMMON_SHARE`` of the accepted answers, and in at least three of them."""
    counts = Counter(w for r in requests for w in set(novel_words(r.accepted, r.question)))
    bound = max(2, int(COMMON_SHARE * len(requests)))
    return {w for w, n in counts.items() if n > bound}


def key_word(request: RecallRequest, stable_answer: str, common: set[str]) -> str | None:
    """The first novel word of the accepted answer that stable's answer also says and that is not common."""
    stable_said = {w.lower() for w in words(stable_answer)}
    return next((w for w in novel_words(request.accepted, request.question) if w in stable_said and w not in common),
                None)


def says(answer: str, key: str) -> bool:
    """Whether ``answer`` contains ``key`` as a word (case-insensitive)."""
    return key in {w.lower() for w in words(answer)}


@dataclass(frozen=True)
class RecallScore:
    """How many of the scope's accepted answers each side still says (their key word)."""

    requests: int
    """requests with a key word (the others are not counted)"""
    answers: int
    """answers counted per side (over those requests)"""
    candidate: int
    stable: int


def recall_score(requests: Sequence[RecallRequest], stable_first: Sequence[str],
                 stable_counted: Sequence[Sequence[str]], candidate: Sequence[Sequence[str]]) -> RecallScore:
    """Count, over the requests that have a key word (chosen with stable's first answer), the candidate's
    answers and stable's further answers that contain it. Counts only: the verdict is kept in the registry's
    audit trail, which must hold none of the users' words."""
    common = common_words(requests)
    counted = answers = cand = stab = 0
    for request, first, seconds, theirs in zip(requests, stable_first, stable_counted, candidate, strict=True):
        key = key_word(request, first, common)
        if key is None:
            continue
        counted += 1
        answers += len(theirs)
        stab += sum(says(a, key) for a in seconds)
        cand += sum(says(a, key) for a in theirs)
    return RecallScore(counted, answers, cand, stab)
