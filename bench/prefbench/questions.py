"""Question pools: the facts a persona asks about while interacting, and held-out ones for evaluation.

The split depends only on the seed, so every method sees the same interaction questions and the same
fresh evaluation prompts (with the same sampling seeds) for a given seed.

Questions come in two forms. ``plain`` asks for the fact the way the tiny model's corpus does ("What is
the capital of Peru?"); a real chat model answers that in one short sentence, so a user who wants short
answers is already served and nothing is left to learn. ``open`` asks about the same fact the way people
also ask, inviting a fuller answer ("Tell me about the capital of Peru."); the fact is still the one the
user checks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from learner.tinycorpus import FACTS, TOPICS, Fact

OPEN_QUESTIONS: dict[str, tuple[str, ...]] = {
    "capitals": ("Tell me about the capital of {s}.", "What can you tell me about the capital city of {s}?"),
    "colors": ("Tell me about the color of {s}.", "How would you describe the color of {s}?"),
    "sounds": ("Tell me about the sound {s} makes.", "How would you describe the noise {s} makes?"),
    "opposites": ("Tell me about the opposite of the word {s}.", "Can you explain what the opposite of {s} is?"),
    "counts": ("Tell me about the number of {s}.", "Can you explain how many {s} there are?"),
}
"""Per topic, questions about its facts that invite more than the bare fact ({s} = subject)."""
QUESTION_FORMS = ("plain", "open")


def check_form(form: str) -> None:
    if form not in QUESTION_FORMS:
        raise ValueError(f"unknown form {form!r}; known: {', '.join(QUESTION_FORMS)}")


def templates_of(topic: str, form: str) -> tuple[str, ...]:
    """The question templates of ``topic`` in ``form`` ("plain" or "open")."""
    check_form(form)
    return TOPICS[topic].questions if form == "plain" else OPEN_QUESTIONS[topic]


def ask(fact: Fact, variant: int, form: str = "plain") -> str:
    """The ``variant``-th question about ``fact`` in ``form`` (variants wrap around)."""
    templates = templates_of(fact.topic, form)
    return templates[variant % len(templates)].format(s=fact.subject)


@dataclass(frozen=True)
class EvalPrompt:
    fact: Fact
    question: str
    seed: int
    """Sampling seed sent with the request: identical across methods and checkpoints."""


@dataclass(frozen=True)
class Pools:
    interact: tuple[Fact, ...]
    evaluate: tuple[EvalPrompt, ...]
    form: str = "plain"


def split_pools(seed: int, n_eval: int, topics: tuple[str, ...] = (), form: str = "plain") -> Pools:
    """Hold out ``n_eval`` facts (spread over topics) for evaluation; the rest are asked in sessions.

    ``topics`` limits both pools to those topics (empty: every topic); ``form`` words every question.
    """
    check_form(form)
    unknown = set(topics) - set(TOPICS)
    if unknown:
        raise ValueError(f"unknown topics {sorted(unknown)}; known: {sorted(TOPICS)}")
    rng = random.Random(f"prefbench-pools-{seed}")
    facts = [fact for fact in FACTS if not topics or fact.topic in topics]
    rng.shuffle(facts)
    by_topic: dict[str, list[Fact]] = {}
    for fact in facts:
        by_topic.setdefault(fact.topic, []).append(fact)
    held: list[Fact] = []
    while len(held) < n_eval and any(by_topic.values()):
        for topic in sorted(by_topic):
            if by_topic[topic] and len(held) < n_eval:
                held.append(by_topic[topic].pop())
    interact = tuple(f for f in facts if f not in held)
    prompts = tuple(
        EvalPrompt(fact, ask(fact, i, form), seed=10_000 * (seed + 1) + i) for i, fact in enumerate(held)
    )
    return Pools(interact, prompts, form)


def question_stream(pools: Pools, rng: random.Random) -> Iterator[tuple[Fact, str]]:
    """Endless interaction questions: shuffled facts, each with a random question wording."""
    while True:
        order = list(pools.interact)
        rng.shuffle(order)
        for fact in order:
            yield fact, ask(fact, rng.randrange(len(templates_of(fact.topic, pools.form))), pools.form)
