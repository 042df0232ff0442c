"""The embedded judge on the reactions of PrefBench's simulated users (written independently of it)."""

from __future__ import annotations

import random

import pytest

from labeler.embedded import EmbeddedJudge
from labeler.tally import select_hint

prefbench = pytest.importorskip("bench.prefbench.personas")
tinycorpus = pytest.importorskip("learner.tinycorpus")
ANSWER = {"role": "assistant", "content": "The answer is a short paragraph about it."}


def reactions(n: int = 150, seed: int = 7) -> list[tuple[str, int, str, str]]:
    """(kind, expected reward, request, next message) drawn like the simulator draws them."""
    rng = random.Random(seed)
    facts = list(tinycorpus.FACTS)
    personas = list(prefbench.PERSONAS.values())
    out = []
    for _ in range(n):
        asked, following, third = rng.sample(facts, 3)
        question = asked.question(rng.randrange(8))
        next_question = following.question(rng.randrange(8))
        third_question = third.question(rng.randrange(8))
        persona = rng.choice(personas)
        move_on = rng.choice(prefbench.MOVE_ON).format(q=next_question)
        directive = rng.choice(persona.directives)
        if rng.random() < 0.4:
            directive = f"{rng.choice(('No.', 'Hmm.', 'Not like that.', 'Please redo it.'))} {directive}"
        out += [
            ("thanks", 1, question, f"{rng.choice(prefbench.THANKS)} {move_on}"),
            ("silent", 1, question, move_on),
            ("directive", -1, question, directive),
            ("complaint", -1, question, rng.choice(persona.complaints + prefbench.GENERIC_COMPLAINTS)),
            ("loop_complaint", -1, question, rng.choice(prefbench.LOOP_COMPLAINTS)),
            ("rephrase", -1, question, rng.choice(prefbench.REPHRASINGS).format(q=question)),
            # later in a session the request also thanks for the answer before it and moves on
            ("rephrase_after_moving_on", -1, f"{rng.choice(prefbench.THANKS)} {move_on}",
             rng.choice(prefbench.REPHRASINGS).format(q=next_question)),
            # a user who gives up on a question after its retries corrects and asks the next one
            ("directive_then_moving_on", -1, question, f"{directive} {move_on}"),
            ("thanks_after_moving_on", 1, f"{rng.choice(prefbench.THANKS)} {move_on}",
             f"{rng.choice(prefbench.THANKS)} {rng.choice(prefbench.MOVE_ON).format(q=third_question)}"),
        ]
    return out


def test_simulated_reactions_are_judged_and_directives_become_hints() -> None:
    judge = EmbeddedJudge()
    right: dict[str, list[int]] = {}
    hints = []
    for kind, expected, question, text in reactions():
        verdict = judge.judge([{"role": "user", "content": question}], ANSWER, [{"role": "user", "content": text}])
        right.setdefault(kind, []).append(verdict.tally().reward == expected)
        if kind.startswith("directive"):
            hints.append(select_hint(verdict.hints))
    rates = {kind: sum(v) / len(v) for kind, v in right.items()}
    # first scores of the two "after moving on" kinds, before the judge compared clauses of the request:
    # rephrase 0.480, thanks 0.980
    print(rates)
    assert all(rate >= 0.9 for rate in rates.values()), rates
    assert sum(h is not None for h in hints) / len(hints) >= 0.9


def test_every_persona_directive_becomes_an_imperative_hint() -> None:
    from labeler.directives import hint_from

    for persona in prefbench.PERSONAS.values():
        for directive in persona.directives:
            hint = hint_from(f"Not like that. {directive}")
            assert hint and hint[0].isupper() and hint.endswith(".") and not hint.lower().startswith("please"), directive
