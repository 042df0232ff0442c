"""PrefBench on a real model: the text personas' predicates and the streak metric, as literal tables."""

from __future__ import annotations

import pytest

from bench.prefbench.__main__ import config_from_args, streak_lines
from bench.prefbench.personas import PERSONAS
from bench.prefbench.personas_text import (
    TEXT_PERSONAS,
    has_signoff,
    is_brief,
    is_direct,
    is_list,
    is_lowercase,
    is_one_sentence,
)
from bench.prefbench.runner import changed_settings
from bench.prefbench.streak import first_replies, sessions_to_streak

LONG = ("The capital of France is Paris. It is known for the Eiffel Tower, the Louvre and its cafes, "
        "and it has been the country's capital for centuries.")


@pytest.mark.parametrize(("check", "answer", "expected"), [
    (is_brief, "Paris.", True),
    (is_brief, "The capital of France is Paris, a city on the Seine.", False),  # eleven words
    (is_brief, "", False),
    (is_brief, LONG, False),
    (is_lowercase, "paris, of course.", True),
    (is_lowercase, "Paris.", False),
    (is_lowercase, "42", False),  # no letters: not an answer in lowercase
    (is_list, "- Paris\n- Lyon", True),
    (is_list, "Cities:\n1. Paris\n2) Lyon\n", True),
    (is_list, "- Paris only", False),
    (is_list, LONG, False),
    (has_signoff, "Paris. Hope this helps!", True),
    (has_signoff, "Paris.\n\nHave a great day.", True),
    (has_signoff, "Cheers! Paris.", False),  # a closing line closes
    (has_signoff, LONG, False),
    (is_direct, "Paris.", True),
    (is_direct, "Sure! The capital is Paris.", False),
    (is_direct, "Great question. Paris.", False),
    (is_direct, "Surely you know it is Paris.", True),  # a word that starts like a preamble is not one
    (is_direct, "  ", False),
    (is_one_sentence, "The capital of France is Paris.", True),
    (is_one_sentence, "Paris", True),
    (is_one_sentence, LONG, False),
    (is_one_sentence, "Paris.\nIt is in France", False),  # a second line is a second sentence
    (is_one_sentence, "- Paris\n- Lyon", False),
    (is_one_sentence, " ", False),
])
def test_predicates(check, answer: str, expected: bool) -> None:  # type: ignore[no-untyped-def]
    assert check(answer) is expected


def test_personas_react_in_their_own_words() -> None:
    assert not set(TEXT_PERSONAS) & set(PERSONAS)  # one matrix can name both kinds
    tiny_words = {d.lower() for p in PERSONAS.values() for d in p.directives + p.complaints}
    for persona in TEXT_PERSONAS.values():
        assert len(persona.directives) >= 3 and len(persona.complaints) >= 3
        assert not {d.lower() for d in persona.directives + persona.complaints} & tiny_words


def interactions(*sessions: list[bool]) -> list[dict[str, object]]:
    out, index = [], 0
    for s, replies in enumerate(sessions):
        for satisfied in replies:
            index += 1
            out.append({"index": index, "session_id": f"r-s{s + 1}", "satisfied": satisfied})
    return out


@pytest.mark.parametrize(("sessions", "expected"), [
    ([[True], [True], [True]], 3),
    ([[False, True], [True], [True], [True]], 4),  # a satisfying retry is not a satisfying first reply
    ([[True], [False], [True], [True], [False, True], [True], [True], [True]], 8),
    ([[True], [True], [False]], None),
    ([], None),
])
def test_sessions_to_three_satisfying_first_replies(sessions: list[list[bool]], expected: int | None) -> None:
    assert sessions_to_streak(interactions(*sessions)) == expected


def test_first_replies_follow_the_interaction_order() -> None:
    shuffled = list(reversed(interactions([False, True], [True])))
    assert first_replies(shuffled) == [False, True]
    run = {"method": "rl", "persona": "brief", "seed": 0, "interactions": interactions([True], [True], [True])}
    assert streak_lines([run]) == ["       rl sessions to 3 satisfying first replies in a row: brief/s0: 3"]


def test_model_option_runs_the_product_preset_and_text_personas(capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = config_from_args(["--model", "smollm2-135m"])
    assert config.personas == ("brief", "skimmer", "oneliner")
    assert (config.lr, config.steps_per_batch) == (None, None)  # the learner takes the model's own preset
    assert config.extra_env == {"NEXTSTATE_BASE_MODEL": "builtin:smollm2-135m"} and config.idle_timeout_s == 20.0
    printed = capsys.readouterr().out
    assert printed.count("setting: ") == 6 and "'small' preset" in printed and "idle timeout 20 s" in printed
    assert config.max_tokens == 64 and "at most 64 tokens instead of 96" in printed
    assert config.topics == ("capitals", "opposites") and "questions on capitals,opposites only" in printed
    assert config.questions == "open" and "open questions" in printed
    config, _ = config_from_args(["--model", "smollm2-135m", "--personas", "skimmer", "--lr", "1e-3"])
    assert (config.personas, config.lr) == (("skimmer",), 1e-3)
    assert config_from_args([])[0].personas == ("terse", "quiet", "listy")  # the tiny model's bench is unchanged
    assert config_from_args([])[0].topics == ()
    assert config_from_args([])[0].max_tokens == 96
    assert config_from_args(["--model", "smollm2-135m", "--topics", "colors"])[0].topics == ("colors",)
    assert config_from_args([])[0].questions == "plain"
    assert config_from_args(["--model", "smollm2-135m", "--questions", "plain"])[0].questions == "plain"


def test_set_passes_a_product_setting_to_every_stack_and_the_report() -> None:
    config, _ = config_from_args(["--model", "smollm2-135m", "--set", "NEXTSTATE_RL_BASELINE=1"])
    assert config.extra_env == {"NEXTSTATE_BASE_MODEL": "builtin:smollm2-135m", "NEXTSTATE_RL_BASELINE": "1"}
    assert changed_settings(config, "combined", 0)["NEXTSTATE_RL_BASELINE"] == ("1", "set by the caller")
    with pytest.raises(SystemExit):
        config_from_args(["--set", "RL_BASELINE"])


def test_first_seed_picks_where_the_seeds_start() -> None:
    assert config_from_args([])[0].seeds == (0, 1, 2)
    assert config_from_args(["--seeds", "2"])[0].seeds == (0, 1)
    assert config_from_args(["--seeds", "1", "--first-seed", "2"])[0].seeds == (2,)
    assert config_from_args(["--first-seed", "3"])[0].seeds == (3, 4, 5)  # as many seeds as the default, from 3
