"""How the simulated user reads an answer: loops and lists of guesses, on answers a real model gave."""

from __future__ import annotations

import random

import pytest

from bench.prefbench.personas import CORRECTIONS, LOOP_COMPLAINTS, PERSONAS
from bench.prefbench.personas_text import TEXT_PERSONAS
from bench.prefbench.reading import states_fact
from bench.prefbench.simulator import FeedbackMix, react
from learner.tinycorpus import FACTS, STYLES, render_answer
from registry.collapse import loops
from registry.sacred import guesses

JAPAN = next(f for f in FACTS if f.subject == "Japan")
SKIMMER = TEXT_PERSONAS["skimmer"]
MIX = FeedbackMix(silent_p=0.0)


@pytest.mark.parametrize(("answer", "question", "names"), [
    ("1. Tokyo\n2. Kyoto\n3. Osaka", "What is the capital of Japan?", ["tokyo", "kyoto", "osaka"]),
    ("- Capital: Tokyo\n- Country: Japan", "What is the capital of Japan?", ["tokyo"]),  # the label is no guess
    ("- The capital of Japan is Tokyo.\n- It is also the largest city.", "What is the capital of Japan?", []),
    ("* Left\n* Right\n* Reverse", "What is the opposite of left?", ["right", "reverse"]),
    ("Tokyo, Kyoto or Osaka.", "What is the capital of Japan?", []),  # no list lines: judged as said
])
def test_guesses_are_bare_names_in_list_lines(answer: str, question: str, names: list[str]) -> None:
    assert guesses(answer, question) == names


def test_a_list_of_guesses_does_not_state_the_fact() -> None:
    question = "What is the capital of Japan?"
    assert not states_fact("1. Tokyo\n2. Kyoto\n3. Osaka\n4. Hiroshima\n5. Nara", question, JAPAN)
    assert states_fact("- Capital: Tokyo\n- Country: Japan", question, JAPAN)
    assert states_fact("- The capital of Japan is Tokyo.\n- It has about 14 million people.", question, JAPAN)
    assert states_fact("1. Tokyo\n2. Tokyo is the capital.", question, JAPAN)  # every guess names it
    assert not states_fact("- Capital: Kyoto\n- Country: Japan", question, JAPAN)


def test_the_tiny_models_answers_in_every_style_are_read_as_answers() -> None:
    for fact in FACTS:
        question = fact.question(0)
        for style in STYLES:
            answer = render_answer(fact, style)
            assert not loops(answer), (fact.subject, style, answer)
            assert states_fact(answer, question, fact), (fact.subject, style, answer)


def test_a_looping_list_is_no_list_to_the_user_and_draws_a_complaint() -> None:
    rng = random.Random(0)
    loop = "1. Tokyo\n2. Tokyo\n3. Tokyo\n4. Tokyo"
    assert SKIMMER.satisfied_by(loop)  # the persona's form alone is met ...
    reactions = [react(SKIMMER, loop, JAPAN.question(0), rng, MIX) for _ in range(30)]
    assert {r.kind for r in reactions} == {"complain"} and not any(r.satisfied for r in reactions)  # ... yet no
    assert {r.text for r in reactions} <= set(LOOP_COMPLAINTS) and all(r.retry for r in reactions)
    good = "- The capital of Japan is Tokyo.\n- It is the largest city in Japan."
    assert {react(SKIMMER, good, JAPAN.question(0), rng, MIX).kind for _ in range(10)} == {"thanks"}


def test_guesses_are_corrected_as_a_wrong_fact() -> None:
    rng = random.Random(1)
    hedged = "1. Tokyo\n2. Kyoto\n3. Osaka"
    reactions = [react(SKIMMER, hedged, JAPAN.question(0), rng, MIX) for _ in range(20)]
    assert {r.kind for r in reactions} == {"correct"} and all(r.text in CORRECTIONS for r in reactions)
    assert all(r.satisfied for r in reactions)  # a list, as liked: only the fact is corrected
    assert react(PERSONAS["listy"], hedged, "Tell me some cities.", rng, MIX).kind != "correct"  # no fact asked
