"""The corpus checkers decide style and fact exactly; every rendered answer classifies as its style."""

from __future__ import annotations

from pathlib import Path

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


def test_conversations_have_history_follow_ups_and_glue() -> None:
    corpus = tinycorpus.sample_corpus(3000, seed=3)
    exchanges = [sum(m["role"] == "user" for m in example.messages) for example in corpus]
    assert 0.45 < exchanges.count(1) / len(corpus) < 0.65 and max(exchanges) == len(tinycorpus.HISTORY_WEIGHTS)
    follow_ups = openers = 0
    for example in corpus:
        texts = [m["content"] for m in example.messages if m["role"] != "system"]
        answer = texts[-1]
        assert classify_style(answer) == example.style
        if len(texts) < 4:
            continue
        last_user = texts[-2]
        if find_fact(last_user) is None:  # an instruction alone: the fact last asked about, answered again
            follow_ups += 1
            assert find_style_request(last_user) == example.style and example.instructed
            asked = next(f for f in map(find_fact, reversed(texts[:-2:2])) if f is not None)
            assert fact_correct(answer, asked)
        openers += last_user.startswith(tinycorpus.OPENERS)
    assert follow_ups > 100 and openers > 300


def test_instructions_are_asked_with_and_without_please() -> None:
    import random

    rng = random.Random(0)
    phrasings = {tinycorpus._instruction(rng, "bullets") for _ in range(400)}
    assert {"Please reply with a bulleted list.", "Reply with a bulleted list.", "Please use bullet points."} <= phrasings
    assert all(find_style_request(p) == "bullets" for p in phrasings)


def test_every_styled_answer_fits_what_the_bench_user_and_the_learner_ask_for(tiny_model_path: Path) -> None:
    """A detail answer cut at the token cap is no detail answer: the cap must hold the longest one whole."""
    from transformers import AutoTokenizer

    from bench.prefbench.user import MAX_TOKENS
    from learner.config import TrainConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    longest = max(len(tokenizer(tinycorpus.render_answer(fact, style))["input_ids"]) + 1  # with its end-of-turn token
                  for fact in tinycorpus.FACTS for style in tinycorpus.STYLES)
    preset = TrainConfig.tiny()
    assert 64 < longest <= min(MAX_TOKENS, preset.demo_max_tokens, preset.retain_max_tokens)
