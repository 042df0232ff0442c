"""Question pools: the facts a persona asks about while interacting, and held-out ones for evaluation.

The split depends only on the seed, so every method sees the same interaction questions and the same
fresh evaluation prompts (with the same sampling seeds) for a given seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from learner.tinycorpus import FACTS, TOPICS, Fact


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


def split_pools(seed: int, n_eval: int, topics: tuple[str, ...] = ()) -> Pools:
    """Hold out ``n_eval`` facts (spread over topics) for evaluation; the rest are asked in sessions.

    ``topics`` limits both pools to those topics (empty: every topic).
    """
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
        EvalPrompt(fact, fact.question(i % len(TOPICS[fact.topic].questions)), seed=10_000 * (seed + 1) + i)
        for i, fact in enumerate(held)
    )
    return Pools(interact, prompts)


def question_stream(pools: Pools, rng: random.Random) -> Iterator[tuple[Fact, str]]:
    """Endless interaction questions: shuffled facts, each with a random question wording."""
    while True:
        order = list(pools.interact)
        rng.shuffle(order)
        for fact in order:
            yield fact, fact.question(rng.randrange(len(TOPICS[fact.topic].questions)))
