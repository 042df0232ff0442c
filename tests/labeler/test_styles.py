"""Answer-style corrections in the user's own words become the plain instruction they mean; the tiny
model's corpus knows each family's instruction, so the teacher follows the hint."""

from __future__ import annotations

import pytest

from labeler.directives import hint_from
from labeler.styles import FAMILIES, plain_hint
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
