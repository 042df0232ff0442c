"""How the simulated user reads an answer beyond its form: a loop or a list of guesses is no answer. Pure.

A person who asks "What is the capital of Germany?" and gets "1. Berlin\\n2. Berlin\\n3. Berlin …" has
been given a loop, and one who asks for the capital of Japan and gets "1. Tokyo\\n2. Kyoto\\n3. Osaka"
has not been told which city it is. Both name the right word, and a reader that only looks for it, or
only for the form the persona wants (lines that start with a bullet), counts both as right and as
liked. SmolLM2-135M, taught lists by such a reader, learned exactly these. So a persona is never
satisfied by a loop, complains about it, and takes a list of guesses as a wrong answer (the sacred gate's
``no_guesses`` check reads guesses the same way, ``registry.sacred.guesses``).
"""

from __future__ import annotations

import re

from learner.tinycorpus import Fact, fact_correct
from registry.collapse import LIST_MARKER, LOOP_REPETITION, ngram_repetition
from registry.sacred import guesses

_WORD = re.compile(r"[a-z0-9']+")


def _lines(answer: str) -> list[str]:
    """The answer's non-empty lines, list markers removed, lower-cased, spaces and end punctuation evened."""
    out = []
    for line in answer.lower().splitlines():
        text = " ".join(_WORD.findall(LIST_MARKER.sub("", line)))
        if text:
            out.append(text)
    return out


def looping(answer: str) -> bool:
    """A line said twice, or most of the answer's word 3-grams repeated (``registry.collapse``)."""
    lines = _lines(answer)
    return len(set(lines)) < len(lines) or ngram_repetition(answer) >= LOOP_REPETITION


def states_fact(answer: str, question: str, fact: Fact) -> bool:
    """The answer names the fact's answer and does not hedge: no other bare name beside it in a list."""
    if not fact_correct(answer, fact):
        return False
    named = guesses(answer, question)
    return len(named) < 2 or all(fact_correct(name, fact) for name in named)
