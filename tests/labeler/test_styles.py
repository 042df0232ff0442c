"""Answer-style corrections in the user's own words become the plain instruction they mean; the tiny
model's corpus knows each family's instruction, so the teacher follows the hint."""

from __future__ import annotations

import pytest

from labeler.directives import hint_from
from labeler.styles import FAMILIES, content_words, honours, plain_hint, says_no_more
from learner.tinycorpus import find_style_request


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("Drop the capital letters.", "Answer in lowercase."),
        ("No caps please.", "Answer in lowercase."),
        ("Stop using capital letters.", "Answer in lowercase."),
        ("Make it a dash list.", "Use bullet points."),
        ("Dashes, one item per line.", "Use bullet points."),
        ("Could you list it out?", "Use bullet points."),
        ("Hmm. Just the name next time.", "Answer in one word."),
        ("Only the name, nothing else.", "Answer in one word."),
        ("Too short, give me more detail.", "Answer in a full sentence with some detail."),
        ("End the answer with a goodbye.", "End your answer with a sign-off."),
        ("Shorter please.", "Make it shorter."),  # no family: kept as the user said it
        ("Sign off with 'Bye'.", "Sign off with 'Bye'."),  # quoted words to use: more than a style
    ],
)
def test_wordings_become_plain_instructions(text: str, hint: str) -> None:
    assert hint_from(text) == hint


def test_every_family_instruction_is_one_the_tiny_model_was_taught() -> None:
    for family in FAMILIES:
        assert find_style_request(family.instruction) == family.name
        assert plain_hint(family.instruction) == family.instruction


def test_a_hint_matching_two_families_is_kept() -> None:
    assert plain_hint("Use bullet points in lowercase.") == "Use bullet points in lowercase."


@pytest.mark.parametrize(
    ("hint", "answer", "before", "verdict"),
    [
        ("Use bullet points.", "- Paris\n- the capital of France", "Paris is the capital of France.", True),
        ("make it a dash list", "1. Paris\n2. France", "", True),
        ("Use bullet points.", "The capital of France is Paris.", "", False),
        ("Use bullet points.", "- Paris", "", False),  # one line is not a list
        ("Drop the capital letters.", "paris is the capital.", "", True),
        ("Answer in lowercase.", "Paris is the capital.", "", False),
        ("Answer in lowercase.", "42", "", False),  # no letters: nothing shows it
        ("Just the name.", "Paris.", "", True),
        ("Answer in one word.", "It is Paris.", "", False),
        ("More detail please.", "Paris is the capital of France. It lies on the Seine.", "", True),
        ("More detail please.", "Paris is the capital.\nCheers!", "", False),  # the sign-off is no detail
        ("More detail please.", "Paris.", "", False),
        ("Sign off at the end.", "Paris is the capital.\nHave a great day!", "", True),
        ("Sign off at the end.", "The best city is Paris.", "", False),  # "best" inside the answer
        ("Make it shorter.", "Paris.", "The capital of France is Paris.", True),
        ("Too long!", "The capital of France is Paris, a city.", "Paris is the capital.", False),
        ("Shorter please.", "", "Paris is the capital.", False),  # empty is not an answer
        ("Answer in French.", "Paris.", "", None),  # not a form these checks read
        ("Use bullet points in lowercase.", "- paris\n- france", "", None),  # two families at once
    ],
)
def test_honours_reads_whether_an_answer_does_what_the_hint_asks(hint: str, answer: str, before: str,
                                                                 verdict: bool | None) -> None:
    assert honours(hint, answer, before) is verdict


QUESTION = "What is the capital of Peru?"
BEFORE = "The capital of Peru is Lima."


@pytest.mark.parametrize(
    ("hint", "answer", "verdict"),
    [
        ("Use bullet points.", "- Capital: Lima\n- Country: Peru", True),  # the same answer as a list
        ("Use bullet points.", "1. Rome (Italy)\n2. Paris (France)\n3. London (United Kingdom)", False),
        ("Answer in lowercase.", "the capital of peru is lima.", True),
        ("Answer in lowercase.", "lima is lovely, with beaches, museums and great food.", False),
        ("Make it shorter.", "Lima.", True),
        ("Make it shorter.", "Madrid, Spain's capital.", False),  # shorter, and another answer
        ("Answer in one word.", "Lima", True),
        ("Answer in one word.", "Cusco", False),  # one word, and another fact than the answer it corrected
        ("Answer in one word.", "lima.", True),
        ("More detail please.", "The capital of Peru is Lima. It lies on the Pacific coast.", True),  # may add
    ],
)
def test_a_change_of_form_keeps_what_was_said(hint: str, answer: str, verdict: bool) -> None:
    assert honours(hint, answer, BEFORE, QUESTION) is verdict


def test_content_words_and_says_no_more() -> None:
    assert content_words("The capital of Peru is Lima, isn't it?") == {"capital", "peru", "lima", "isn't"}
    assert says_no_more("Lima", BEFORE)
    assert not says_no_more("Cusco", BEFORE)  # a single word is judged too: it is the whole answer
    assert says_no_more("Lima, Chile", BEFORE)  # one of two known
    assert says_no_more("Yes, of it", BEFORE)  # no content word said: nothing to judge
    assert says_no_more("Rome Paris London", "")  # nothing known: nothing to judge
    assert says_no_more("Peru capital Lima Andes", BEFORE)  # three of four known
    assert not says_no_more("Rome Paris London", BEFORE)


def test_the_tiny_models_answers_honour_their_own_familys_hint_only() -> None:
    from learner.tinycorpus import FACTS, render_answer

    by_name = {family.name: family for family in FAMILIES}
    for fact in FACTS:
        for family in FAMILIES:
            assert family.honoured(render_answer(fact, family.name, signoff=len(fact.answer)))
        detail = render_answer(fact, "detail")
        assert not any(by_name[name].honoured(detail) for name in ("word", "bullets", "signoff", "lowercase"))
        word = render_answer(fact, "word")
        assert not any(by_name[name].honoured(word) for name in ("bullets", "signoff", "detail"))
