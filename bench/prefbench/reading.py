"""How the simulated user reads an answer beyond its form: a loop or a list of guesses is no answer. Pure.

A person who asks "What is the capital of Germany?" and gets "1. Berlin\\n2. Berlin\\n3. Berlin …" has
been given a loop, and one who asks for the capital of Japan and gets "1. Tokyo\\n2. Kyoto\\n3. Osaka"
has not been told which city it is. Both name the right word, and a reader that only looks for it, or
only for the form the persona wants (lines that start with a bullet), counts both as right and as
liked. SmolLM2-135M, taught lists by such a reader, learned exactly these. So a persona is never
satisfied by a loop (``registry.collapse.loops``, the test the learner's hint demonstrations pass too),
complains about it, and takes a list of guesses as a wrong answer (the sacred gate's ``no_guesses``
check reads guesses the same way, ``registry.sacred.guesses``).
"""

from __future__ import annotations

from learner.tinycorpus import Fact, fact_correct
from registry.sacred import guesses


def states_fact(answer: str, question: str, fact: Fact) -> bool:
    """The answer names the fact's answer and does not hedge: no other bare name beside it in a list."""
    if not fact_correct(answer, fact):
        return False
    named = guesses(answer, question)
    return len(named) < 2 or all(fact_correct(name, fact) for name in named)
