"""PrefBench personas for a real chat model: hidden preferences that are predicates on free text.

The tiny model's personas want one of its five trained styles; a real model writes free text, so these
personas judge any answer with a plain predicate (word count, letter case, list lines, a closing line,
the opening words) and react in everyday words of their own, never in the phrasings of the tiny model's
corpus. Each is a preference a real small model can be moved toward by its own samples: it happens now
and then in its answers, or follows when asked. Names differ from the tiny model's personas, so one
matrix can name both.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_WORDS = re.compile(r"[A-Za-z0-9']+")
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)
_SIGNOFF = re.compile(r"(hope (this|that) helps|cheers|have a (great|nice|good|lovely) (day|one)|take care|"
                      r"best wishes|happy to help|all the best|enjoy)\W*$", re.IGNORECASE)
_PREAMBLE = re.compile(r"^\W*(sure|certainly|of course|absolutely|great question|good question|hello|hi|hey|"
                       r"i'?d be (happy|glad)|i'?m (happy|glad)|happy to|okay|ok|well)\b", re.IGNORECASE)


def word_count(answer: str) -> int:
    return len(_WORDS.findall(answer))


def is_brief(answer: str, limit: int = 10) -> bool:
    """At most ``limit`` words, and not empty."""
    return 0 < word_count(answer) <= limit


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")


def is_one_sentence(answer: str) -> bool:
    """One sentence on one line: nothing follows its first full stop, and no second line."""
    return len([part for part in _SENTENCE_BREAK.split(answer.strip()) if part.strip()]) == 1


def is_lowercase(answer: str) -> bool:
    """Has letters and no capital letter anywhere."""
    return any(c.isalpha() for c in answer) and not any(c.isupper() for c in answer)


def is_list(answer: str) -> bool:
    """At least two lines that start with a bullet or a number."""
    return len(_LIST_LINE.findall(answer)) >= 2


def has_signoff(answer: str) -> bool:
    """Ends with a friendly closing line ("Hope this helps!", "Have a great day.", "Cheers!")."""
    return _SIGNOFF.search(answer.strip()) is not None


def is_direct(answer: str) -> bool:
    """Starts with the answer: no "Sure!", "Certainly,", "Great question" or greeting first."""
    return bool(answer.strip()) and _PREAMBLE.search(answer) is None


@dataclass(frozen=True)
class TextPersona:
    """A simulated user whose hidden preference is a predicate on free text; same interface as ``Persona``."""

    name: str
    style: str
    """A name for the preference (reports group by it)."""
    check: Callable[[str], bool]
    directives: tuple[str, ...]
    """Corrections that say what to do, in the persona's own words."""
    complaints: tuple[str, ...]
    """Reactions that only say the answer did not fit."""

    def satisfied_by(self, answer: str) -> bool:
        return self.check(answer)


TEXT_PERSONAS: dict[str, TextPersona] = {
    persona.name: persona
    for persona in (
        TextPersona(
            "brief", "at most ten words", is_brief,
            directives=("Shorter please, ten words at most.", "Keep it to a few words.",
                        "Just give me the answer in a handful of words.", "Way shorter. One short line is enough.",
                        "Cut it down to the bare answer, no explanation."),
            complaints=("That's a lot of text for a simple question.", "I don't have time to read all that.",
                        "Too long, honestly."),
        ),
        TextPersona(
            "oneliner", "one sentence", is_one_sentence,
            directives=("Just one sentence, please.", "Keep it to a single sentence.", "Can you say that in one sentence?",
                        "One sentence is enough."),
            complaints=("That rambles on.", "Too many sentences.", "I only need one line of that."),
        ),
        TextPersona(
            "lowkey", "all lowercase", is_lowercase,
            directives=("Drop the capital letters, please.", "Write it all in small letters.",
                        "No capitals anywhere, please.", "Could you keep everything lowercase?"),
            complaints=("The capitals feel like shouting to me.", "I find capital letters annoying.",
                        "Not the relaxed style I like."),
        ),
        TextPersona(
            "skimmer", "a list", is_list,
            directives=("Put that in bullet points, please.", "Give it to me as a list.",
                        "Break it into a few bullet points.", "Could you list the points one per line?"),
            complaints=("That's hard to skim.", "A block of text again.", "I prefer things laid out point by point."),
        ),
        TextPersona(
            "courteous", "a friendly sign-off", has_signoff,
            directives=("End with something friendly like 'Hope this helps!'.", "Close with a warm sign-off, please.",
                        "Finish your reply with a kind closing line.", "A little 'have a great day' at the end would be nice."),
            complaints=("That was a bit abrupt.", "Feels cold somehow.", "No goodbye?"),
        ),
        TextPersona(
            "direct", "no preamble", is_direct,
            directives=("Skip the 'Sure!' and just answer.", "No intro please, start with the answer.",
                        "Leave out the pleasantries at the start."),
            complaints=("So much throat-clearing.", "Get to the point.", "The opening filler annoys me."),
        ),
    )
}
