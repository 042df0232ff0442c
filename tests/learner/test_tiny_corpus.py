"""The corpus checkers decide style and fact exactly; every rendered answer classifies as its style."""

from __future__ import annotations

import pytest

from learner import tinycorpus
from learner.tinycorpus import FACTS, STYLES, classify_style, fact_correct, find_fact, find_style_request


@pytest.mark.parametrize(
    ("text", "style"),
    [
        ("Paris", "word"),
        ("paris.", "word"),
        ("the capital of france is paris.", "lowercase"),
        ("The capital of France is Paris. Paris is where the government of France meets.", "detail"),
        ("- country: France\n- capital: Paris", "bullets"),
        ("The capital of France is Paris.\nHope this helps!", "signoff"),
        ("The capital of France is Paris.", None),  # a plain sentence is none of the styles
        ("the capital of france is paris. it is big.", None),  # two lowercase sentences
        ("- country: France\nParis", None),
        ("", None),
        ("Paris is the capital", None),
    ],
)
def test_classify_style_table(text: str, style: str | None) -> None:
    assert classify_style(text) == style


def test_every_rendering_has_its_style_and_fact() -> None:
    for fact in FACTS:
        for style in STYLES:
            for signoff in range(3):
                answer = tinycorpus.render_answer(fact, style, signoff)
                assert classify_style(answer) == style, answer
                assert fact_correct(answer, fact), answer


@pytest.mark.parametrize(
    ("answer", "correct"),
    [("Paris", True), ("the capital of france is paris.", True), ("Lyon", False), ("Parisian", False)],
)
def test_fact_correct_table(answer: str, correct: bool) -> None:
    assert fact_correct(answer, tinycorpus.Fact("capitals", "France", "Paris")) is correct


def test_find_fact_and_style_request() -> None:
    prompt = tinycorpus.with_instruction("Which city is the capital of Japan?", "bullets", 1, "\n")
    assert find_fact(prompt) == tinycorpus.Fact("capitals", "Japan", "Tokyo")
    assert find_style_request(prompt) == "bullets"
    assert find_style_request("What is the capital of Japan?") is None
    assert find_fact("Tell me a joke.") is None


def test_corpus_is_deterministic_and_balanced() -> None:
    first, second = tinycorpus.sample_corpus(2000, seed=7), tinycorpus.sample_corpus(2000, seed=7)
    assert first == second
    free = [example.style for example in first if not example.instructed]
    for style in STYLES:  # without an instruction every style is equally likely (0.2 each)
        assert 0.14 < free.count(style) / len(free) < 0.26
    assert 0.5 < sum(example.instructed for example in first) / len(first) < 0.7
