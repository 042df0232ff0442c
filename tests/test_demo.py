"""``nextstate demo``'s choices: the model, and the persona that fits it."""

from __future__ import annotations

from nextstate.demo import BRIEF, DEFAULT_PERSONA, MODELS, parse_args


def test_each_built_in_model_has_a_persona_it_can_be_moved_toward() -> None:
    assert set(MODELS) == set(DEFAULT_PERSONA) == {"tiny-chat", "smollm2-135m"}
    assert parse_args([]).model == "tiny-chat" and parse_args([]).persona is None  # terse on the tiny model
    args = parse_args(["--model", "smollm2-135m", "--persona", "brief"])
    assert (args.model, args.persona) == ("smollm2-135m", "brief")


def test_the_brief_persona_wants_at_most_ten_words() -> None:
    assert BRIEF.satisfied_by("The capital of France is Paris.")
    assert BRIEF.satisfied_by("one two three four five six seven eight nine ten")
    assert not BRIEF.satisfied_by("one two three four five six seven eight nine ten eleven")
    assert not BRIEF.satisfied_by("   ")
    assert BRIEF.directives and BRIEF.complaints
