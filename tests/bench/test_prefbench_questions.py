"""How PrefBench asks its questions: the plain form is the tiny corpus's, the open form asks about the same fact."""

from __future__ import annotations

import random

import pytest

from bench.prefbench.personas_text import TEXT_PERSONAS
from bench.prefbench.questions import OPEN_QUESTIONS, ask, question_stream, split_pools
from bench.prefbench.simulator import FeedbackMix, react
from learner.tinycorpus import FACTS, TOPICS, find_fact

PERU = next(f for f in FACTS if f.subject == "Peru")
MIX = FeedbackMix(silent_p=0.0)


def test_plain_questions_are_the_corpus_questions_and_open_ones_name_the_same_subject() -> None:
    for fact in FACTS:
        for variant in range(4):
            assert ask(fact, variant) == fact.question(variant)
            assert fact.subject in ask(fact, variant, "open")
    assert set(OPEN_QUESTIONS) == set(TOPICS)
    assert ask(PERU, 0, "open") == "Tell me about the capital of Peru."
    assert find_fact(ask(PERU, 0, "open")) is None  # not a wording the corpus knows
    with pytest.raises(ValueError, match="unknown form"):
        ask(PERU, 0, "chatty")


def test_open_pools_hold_out_the_same_facts_with_open_questions() -> None:
    plain = split_pools(seed=1, n_eval=8, topics=("capitals", "opposites"))
    open_ = split_pools(seed=1, n_eval=8, topics=("capitals", "opposites"), form="open")
    assert [p.fact for p in open_.evaluate] == [p.fact for p in plain.evaluate]
    assert [p.seed for p in open_.evaluate] == [p.seed for p in plain.evaluate]
    assert open_.interact == plain.interact
    assert all(p.question == ask(p.fact, i, "open") for i, p in enumerate(open_.evaluate))
    stream = question_stream(open_, random.Random(3))
    asked = [next(stream) for _ in range(2 * len(open_.interact))]
    assert {question for _, question in asked} <= {ask(f, v, "open") for f in open_.interact for v in range(2)}
    assert {fact for fact, _ in asked} == set(open_.interact)
    with pytest.raises(ValueError, match="unknown form"):
        split_pools(seed=1, n_eval=8, form="chatty")


def test_the_user_corrects_a_wrong_fact_it_asked_openly() -> None:
    brief = TEXT_PERSONAS["brief"]
    question = ask(PERU, 1, "open")
    rng = random.Random(0)
    wrong = [react(brief, "Its capital is Quito.", question, rng, MIX, PERU) for _ in range(20)]
    assert {r.kind for r in wrong} == {"correct"} and all(r.retry for r in wrong)
    right = [react(brief, "Lima is the capital of Peru.", question, rng, MIX, PERU) for _ in range(20)]
    assert {r.kind for r in right} == {"thanks"}
    # without the asked fact the open question names none the user could check
    assert {react(brief, "Its capital is Quito.", question, rng, MIX).kind for _ in range(20)} == {"thanks"}
