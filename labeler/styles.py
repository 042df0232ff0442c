"""Answer-style corrections in the user's own words, rewritten as the plain instruction they mean.

Users word a formatting preference in many ways — "drop the capital letters", "no caps", "make it a
dash list", "just the word" — and a hint is only useful when the teacher (the base model with the hint
appended) follows it. Plain instructions ("Answer in lowercase.", "Use bullet points.") are the
form instruction-tuned models are trained on, so a directive that belongs to one of the common style
families below is replaced by that family's plain instruction; anything else is kept as the user
wrote it. Each instruction is one that both built-in models follow: "Use bullet points." rather than
"Answer as a bullet list.", which the tiny model follows as well (0.99 of answers) but
SmolLM2-135M-Instruct seldom does (0.12 against 0.58 in one turn, ``bench/hint_follow.py``). A directive that mixes a style with something else ("bullets, and in French") is kept whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_ITEM = re.compile(r"^\s*(?:[-*•+–]|\d{1,2}[.)])\s+\S", re.MULTILINE)
_CLOSING = re.compile(r"\b(?:best|cheers|regards|bye|goodbye|farewell|take care|have a (?:\w+ )?(?:day|one|time|week)|"
                      r"all the best|talk soon|until next time|hope (?:this|that) helps)\b", re.IGNORECASE)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _lowercase(answer: str) -> bool:
    letters = [c for c in answer if c.isalpha()]
    return bool(letters) and not any(c.isupper() for c in letters)


def _listed(answer: str) -> bool:
    return len(_ITEM.findall(answer)) >= 2


def _one_word(answer: str) -> bool:
    return len(words(answer)) == 1


def _signed_off(answer: str) -> bool:
    """A short closing line ("Cheers!", "Have a great day!") after the answer."""
    lines = [line for line in answer.strip().splitlines() if line.strip()]
    return len(lines) >= 2 and len(words(lines[-1])) <= 8 and bool(_CLOSING.search(lines[-1]))


def _detailed(answer: str) -> bool:
    """A full sentence and more: two sentences, or one of at least twelve words (a sign-off line not counted)."""
    body = answer.strip()
    if _signed_off(body):
        body = "\n".join(body.splitlines()[:-1])
    sentences = [part for part in re.split(r"(?<=[.!?])\s+", body) if len(words(part)) >= 3]
    return len(sentences) >= 2 or len(words(body)) >= 12


@dataclass(frozen=True)
class StyleFamily:
    name: str
    instruction: str
    """The plain instruction a hint of this family becomes."""
    pattern: re.Pattern[str]
    honoured: Callable[[str], bool]
    """Whether an answer does what the instruction asks (a conservative reading of the answer's form)."""
    adds: bool = False
    """Whether the instruction asks for more than the answer said (detail, a closing line)."""


def _words(*alternatives: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE)


FAMILIES: tuple[StyleFamily, ...] = (
    StyleFamily("lowercase", "Answer in lowercase.", _words(
        r"lower[- ]?case", r"small letters", r"no (?:caps|capitals?|capital letters|uppercase)",
        r"(?:drop|lose|remove|skip|ditch|without|stop using|get rid of)(?: all)?(?: the| any)? (?:caps|capitals?|capital letters|"
        r"capitali[sz]ation|uppercase(?: letters)?)",
        r"don'?t capitali[sz]e", r"un-?capitali[sz]ed"), _lowercase),
    StyleFamily("bullets", "Use bullet points.", _words(
        r"bullet(?:ed|s)?(?: points?| list)?", r"dash(?:ed)? list", r"(?:as|into|in) a list", r"list form",
        r"point form", r"dashes", r"itemi[sz]e(?:d)?", r"one (?:item|point) per line", r"make it a list",
        r"list (?:it|them)(?: out)?"), _listed),
    StyleFamily("word", "Answer in one word.", _words(
        r"(?:one|a single|single|1)[- ]word", r"just the (?:word|name|answer|key word|keyword)",
        r"only the (?:word|name|answer|key word|keyword)", r"the (?:word|name) (?:alone|only|is enough)",
        r"nothing but the (?:word|name|answer)", r"no sentences?"), _one_word),
    StyleFamily("detail", "Answer in a full sentence with some detail.", _words(
        r"(?:more|some|added|extra) details?", r"a (?:bit|little) (?:more )?detail", r"in detail", r"detailed",
        r"full sentences?",
        r"complete sentences?", r"elaborate", r"expand on (?:it|that)", r"explain (?:more|a bit more)"), _detailed, adds=True),
    StyleFamily("signoff", "End your answer with a sign-off.", _words(
        r"sign[- ]?off", r"sign (?:it|off|your)", r"say (?:goodbye|bye)", r"closing line",
        r"with an? (?:goodbye|farewell|closing greeting|friendly closing)"), _signed_off, adds=True),
)

# what makes a directive more than a style: another language, more than one request, quoted words to use
_MIXED = re.compile(r"\b(?:in (?:french|german|spanish|italian|english|chinese|japanese)|and also|as well as|plus)\b|['\"]",
                    re.IGNORECASE)


def style_family(hint: str) -> StyleFamily | None:
    """The one style family ``hint`` belongs to (None when none or several match, or it says more)."""
    matches = [family for family in FAMILIES if family.pattern.search(hint)]
    if len(matches) != 1 or _MIXED.search(hint):
        return None
    return matches[0]


def plain_hint(hint: str) -> str:
    """``hint`` as its family's plain instruction, or unchanged when it belongs to no single family."""
    family = style_family(hint)
    return family.instruction if family is not None else hint


_FUNCTION_WORDS = frozenset((
    "the", "and", "but", "for", "nor", "yet", "with", "from", "into", "onto", "about", "above", "below", "over",
    "under", "than", "then", "also", "just", "only", "very", "are", "was", "were", "been", "being", "has", "have",
    "had", "does", "did", "not", "yes", "its", "this", "that", "these", "those", "there", "here", "what", "which",
    "who", "whom", "whose", "how", "why", "when", "where", "your", "you", "our", "their", "his", "her", "they",
    "them", "she", "can", "could", "would", "should", "will", "may", "might", "must", "shall", "some", "any", "all",
    "each", "both",
))


def content_words(text: str) -> set[str]:
    """The words of ``text`` that carry content (lower-cased, at least three letters, no function words)."""
    return {w for w in (word.lower() for word in words(text)) if len(w) >= 3 and w not in _FUNCTION_WORDS}


def says_no_more(answer: str, known: str, share: float = 0.5) -> bool:
    """Whether an answer takes at least ``share`` of its content words from ``known`` (True where either
    has none: nothing to judge).

    A change of form (a list, lowercase, fewer words) says what was said before; an answer that lists
    five other capitals when asked for one has the form and not the answer, and a one-word answer whose
    word was never said names another fact (asked for one word, the built-in tiny model named the right
    capital in 0.83 of its answers and the right opposite in 0.79, against 1.00 and 0.88 unasked).
    """
    said, known_words = content_words(answer), content_words(known)
    return not said or not known_words or len(said & known_words) / len(said) >= share


# a relative request: honoured by an answer shorter than the one it corrected
_SHORTER = _words(r"shorter", r"briefer", r"more (?:concise|brief)", r"too long", r"less wordy", r"fewer words",
                  r"cut it down", r"trim it", r"keep it (?:short|brief)", r"be brief", r"tl;?dr")


def honours(hint: str, answer: str, before: str, question: str = "") -> bool | None:
    """Whether ``answer`` does what ``hint`` asks, and where it asks only for another form, says no more than
    ``question`` and ``before`` (the answer the hint corrected) did. Pure.

    None when the hint asks for something these checks cannot read (not one style family, not "shorter").
    """
    family = style_family(hint)
    if family is not None:
        return family.honoured(answer) and (family.adds or says_no_more(answer, f"{question}\n{before}"))
    if _MIXED.search(hint) or not _SHORTER.search(hint):
        return None
    return 0 < len(words(answer)) < len(words(before)) and says_no_more(answer, f"{question}\n{before}")
