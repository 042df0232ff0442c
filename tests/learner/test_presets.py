"""Which training preset a learner gets for its device and base model."""

from __future__ import annotations

from pathlib import Path

import pytest

from learner.config import TrainConfig
from learner.learner_settings import LearnerSettings, build_config


def test_each_preset_is_what_its_docstring_says() -> None:
    small = TrainConfig.small()
    assert (small.lr, small.lora_r, small.batch_size, small.steps_per_batch) == (2e-3, 8, 4, 2)
    assert (small.topk, small.hint_demos, small.demo_temperature, small.w_retain) == (8, 2, 0.3, 1.0)
    assert (small.retain_temperature, TrainConfig.tiny().retain_temperature) == (0.3, 1.0)  # SmolLM2 at 1.0: incoherent
    assert not small.rl_baseline and not TrainConfig.tiny().rl_baseline  # measured both ways: see the docstring
    assert TrainConfig.small(lr=1e-3).lr == 1e-3  # overrides win
    assert (TrainConfig.tiny().lr, TrainConfig.tiny().steps_per_batch) == (3e-3, 3)
    assert TrainConfig.gpu().dtype == "bfloat16"


@pytest.mark.parametrize(("base_model", "device", "preset", "expected"), [
    ("builtin:tiny-chat", "cpu", "auto", "tiny"),
    ("{tiny_dir}", "cpu", "auto", "tiny"),  # a path to the built tiny model is still the tiny model
    ("builtin:smollm2-135m", "cpu", "auto", "small"),
    ("{other_dir}", "cpu", "auto", "small"),
    ("{other_dir}", "cuda", "auto", "gpu"),
    ("builtin:tiny-chat", "cpu", "small", "small"),
    ("{other_dir}", "cpu", "tiny", "tiny"),
])
def test_auto_preset_follows_device_and_model(tmp_path: Path, base_model: str, device: str, preset: str,
                                             expected: str) -> None:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "nextstate_tiny.json").write_text("{}")
    (tmp_path / "other").mkdir()
    model = base_model.format(tiny_dir=tmp_path / "tiny", other_dir=tmp_path / "other")
    settings = LearnerSettings(home=tmp_path, base_model=model, preset=preset, lr=7e-4)
    config = build_config(settings, device)
    presets = {"tiny": TrainConfig.tiny, "small": TrainConfig.small, "gpu": TrainConfig.gpu}
    assert config == presets[expected](lr=7e-4)


def test_demonstrations_keep_only_honoured_answers_unless_told_otherwise(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrainConfig.small().demo_honoured_only and TrainConfig.tiny().demo_honoured_only
    monkeypatch.setenv("NEXTSTATE_DEMO_HONOURED_ONLY", "0")
    assert build_config(LearnerSettings(home=tmp_path), "cpu").demo_honoured_only is False


def test_the_reward_baseline_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_config(LearnerSettings(home=tmp_path), "cpu").rl_baseline is False
    monkeypatch.setenv("NEXTSTATE_RL_BASELINE", "1")
    assert build_config(LearnerSettings(home=tmp_path), "cpu").rl_baseline is True
