"""How the simulated user reads an answer beyond its form: a loop or a list of guesses is no answer. Pure.

A person who asks "What is the capital of Germany?" and gets "1. Berlin\\n2. Berlin\\n3. Berlin …" has
been given a loop, and one who asks for the capital of Japan and gets "1. Tokyo\\n2. Kyoto\\n3. Osaka"
has not been told which city it is. Both name the right word, and a reader that only looks for it, or
only for the form the persona wants (lines that start with a bullet), counts both as right and as
liked. SmolLM2-135M, taught lists by such a reader, learned exactly these. So a persona is never
satisfied by a loop, complains about it, and takes a list of guesses as a wrong answer.
"""

from __future__ import annotations

import re

from learner.tinycorpus import Fact, fact_correct
from registry.collapse import LOOP_REPETITION, ngram_repetition

_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_WORD = re.compile(r"[a-z0-9']+")
GUESS_WORDS = 2
"""A list line of at most this many words (after a "label:") is a bare name: a guess, not a statement."""


def _lines(answer: str) -> list[str]:
    """The answer's non-empty lines, list markers removed, lower-cased, spaces and end punctuation evened."""
    out = []
    for line in answer.lower().splitlines():
        text = " ".join(_WORD.findall(_MARKER.sub("", line)))
        if text:
            out.append(text)
    return out


def looping(answer: str) -> bool:
    """A line said twice, or most of the answer's word 3-grams repeated (``registry.collapse``)."""
    lines = _lines(answer)
    return len(set(lines)) < len(lines) or ngram_repetition(answer) >= LOOP_REPETITION


def guesses(answer: str, question: str) -> list[str]:
    """The distinct bare names among the answer's list lines ("Tokyo", "Kyoto"; the value after a label
    such as "Capital: Tokyo"), leaving out those the question itself says."""
    asked = set(_WORD.findall(question.lower()))
    names: list[str] = []
    for line in answer.splitlines():
        if not _MARKER.match(line):
            continue
        value = _MARKER.sub("", line).rsplit(":", 1)[-1]
        said = _WORD.findall(value.lower())
        if not said or len(said) > GUESS_WORDS or set(said) <= asked:
            continue
        name = " ".join(said)
        if name not in names:
            names.append(name)
    return names


def states_fact(answer: str, question: str, fact: Fact) -> bool:
    """The answer names the fact's answer and does not hedge: no other bare name beside it in a list."""
    if not fact_correct(answer, fact):
        return False
    named = guesses(answer, question)
    return len(named) < 2 or all(fact_correct(name, fact) for name in named)
