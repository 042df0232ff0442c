"""The simulated user's reactions: thanks, silence, complaints, rephrasings and directive corrections.

Pure functions of the persona, the answer and a seeded ``random.Random``; the reaction text is the only
thing the system ever learns from. A configurable share of reactions is misleading noise. Like a real
user, a persona does not thank a wrong answer, however well styled: it says so and asks again, and when
the style missed too, half the time it adds how it wants answers ("That's wrong. One word only, please.").
Nor is it satisfied by an answer that loops, or that lists guesses instead of saying the fact
(``bench.prefbench.reading``): it complains about the loop and corrects the guesses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from bench.prefbench.personas import (
    CORRECTIONS,
    GENERIC_COMPLAINTS,
    LOOP_COMPLAINTS,
    MOVE_ON,
    REPHRASINGS,
    THANKS,
    Persona,
)
from bench.prefbench.reading import states_fact
from learner.tinycorpus import Fact, find_fact
from registry.collapse import loops

Kind = Literal["thanks", "silent", "complain", "directive", "rephrase", "correct"]


@dataclass(frozen=True)
class FeedbackMix:
    """How a persona reacts; the shares of the unsatisfied reactions are relative weights."""

    silent_p: float = 0.1
    """Chance of giving no feedback at all (just the next question)."""
    noise_p: float = 0.0
    """Chance that the reaction is misleading (thanks for a bad answer, a complaint for a good one)."""
    directive_w: float = 0.6
    complain_w: float = 0.25
    rephrase_w: float = 0.15
    both_p: float = 0.5
    """Chance that a correction of a wrong fact also says how the user wants answers, when the style missed too."""


@dataclass(frozen=True)
class Reaction:
    kind: Kind
    text: str
    """What the user sends next ("" is never sent: a silent user just asks the next question)."""
    satisfied: bool
    """Whether the answer really met the persona's preference (ground truth, never sent)."""
    retry: bool
    """True when the user wants this question answered again (same question, next turn)."""


def react(persona: Persona, answer: str, question: str, rng: random.Random, mix: FeedbackMix,
          asked: Fact | None = None) -> Reaction:
    """The persona's next message after ``answer`` to ``question``; ``asked`` is the fact the user asked about
    (None: the one ``question`` words the plain way, if any)."""
    loop = loops(answer)
    satisfied = persona.satisfied_by(answer) and not loop
    if rng.random() < mix.silent_p:
        return Reaction("silent", "", satisfied, retry=False)
    honest = rng.random() >= mix.noise_p
    fact = asked or find_fact(question)
    if honest and loop:
        return Reaction("complain", rng.choice(LOOP_COMPLAINTS), satisfied, retry=True)
    if honest and fact is not None and not states_fact(answer, question, fact):
        text = rng.choice(CORRECTIONS)
        if not satisfied and rng.random() < mix.both_p:  # wrong and not as liked: says both
            text = f"{text} {rng.choice(persona.directives)}"
        return Reaction("correct", text, satisfied, retry=True)
    if satisfied == honest:  # satisfied and honest, or unsatisfied and misleading
        return Reaction("thanks", rng.choice(THANKS), satisfied, retry=False)
    kinds: list[Kind] = ["directive", "complain", "rephrase"]
    kind = rng.choices(kinds, weights=[mix.directive_w, mix.complain_w, mix.rephrase_w])[0]
    if kind == "directive":
        text = rng.choice(persona.directives)
        if rng.random() < 0.4:
            text = f"{rng.choice(('No.', 'Hmm.', 'Not like that.', 'Please redo it.'))} {text}"
    elif kind == "complain":
        text = rng.choice(persona.complaints + GENERIC_COMPLAINTS)
    else:
        text = rng.choice(REPHRASINGS).format(q=question)
    return Reaction(kind, text, satisfied, retry=True)


def next_message(reaction: Reaction, next_question: str | None, rng: random.Random) -> str:
    """The user message that moves on to ``next_question``: the reaction, then the question.

    Also after a reaction that asked for another try (the user gave up on that question): the new
    question is asked, never only the complaint, or the user would judge the next answer against a
    question the assistant was never asked.
    """
    if next_question is None:
        return reaction.text
    ask = rng.choice(MOVE_ON).format(q=next_question)
    return f"{reaction.text} {ask}".strip()
