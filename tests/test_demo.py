"""``nextstate demo``'s choices: the model, the persona that fits it, and how long it runs."""

from __future__ import annotations

import dataclasses

import pytest

from bench.prefbench.personas import PERSONAS
from bench.prefbench.personas_text import TEXT_PERSONAS, is_one_sentence
from bench.prefbench.real_model import SMOLLM2_TOPICS, real_model_changes
from bench.prefbench.runner import BenchConfig
from nextstate.demo import DEFAULT_PERSONA, MODELS, parse_args


def test_each_built_in_model_has_a_persona_it_can_be_moved_toward() -> None:
    assert set(MODELS) == set(DEFAULT_PERSONA) == {"tiny-chat", "smollm2-135m"}
    tiny = parse_args([])
    assert (tiny.model, tiny.persona, tiny.interactions, tiny.every) == ("tiny-chat", "terse", 36, 6)
    assert tiny.persona in PERSONAS
    real = parse_args(["--model", "smollm2-135m"])
    assert (real.persona, real.interactions, real.every) == ("oneliner", 24, 8)
    # the real model's user wants one sentence: a preference on free text its answers to open questions rarely show
    oneliner = TEXT_PERSONAS[real.persona]
    for answer in ("Paris is the capital of France.", "Paris is the capital. It lies on the Seine.", "- Paris\n- Lyon"):
        assert oneliner.satisfied_by(answer) == is_one_sentence(answer)
    assert oneliner.satisfied_by("Paris is the capital of France.")
    chosen = parse_args(["--model", "smollm2-135m", "--persona", "brief", "--interactions", "24"])
    assert (chosen.persona, chosen.interactions, chosen.every) == ("brief", 24, 8)


@pytest.mark.parametrize(("model", "persona"), [("smollm2-135m", "terse"), ("tiny-chat", "skimmer"),
                                                ("tiny-chat", "nobody")])
def test_a_persona_of_the_other_model_is_refused(model: str, persona: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--model", model, "--persona", persona])
    assert "is not one of" in capsys.readouterr().err


def test_the_real_model_demo_takes_prefbench_real_model_settings(capsys: pytest.CaptureFixture[str]) -> None:
    config = dataclasses.replace(BenchConfig(personas=("skimmer",)),
                                 **real_model_changes("smollm2-135m", personas_chosen=True))  # type: ignore[arg-type]
    assert config.personas == ("skimmer",) and config.topics == SMOLLM2_TOPICS and config.questions == "open"
    assert config.extra_env["NEXTSTATE_BASE_MODEL"] == "builtin:smollm2-135m"
    printed = capsys.readouterr().out
    assert "capitals,opposites" in printed and "idle timeout 20 s" in printed  # every change with its reason
