"""The learner's settings (``NEXTSTATE_*``) and the train config they select: a preset for the device and
the base model, with every training field the operator set laid over it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from learner.config import TrainConfig
from learner.modeling import BUILTIN_TINY
from learner.retain import DEFAULT_RETAIN
from registry.settings import RegistrySettings

CONFIG_FIELDS = ("method", "w_rl", "w_opd", "rl_baseline", "lr", "batch_size", "steps_per_batch", "kl_coef", "topk", "seed",
                 "w_retain", "retain_samples", "hint_demos", "w_demo", "demo_honoured_only")


class LearnerSettings(RegistrySettings):
    """The learner process's settings; unset training fields keep the preset's value."""

    preset: str = Field(default="auto", description="Train config preset: tiny | small | gpu | auto (gpu on CUDA, "
                        "else tiny for the built-in tiny model and small for any other model).")
    device: str | None = Field(default=None, description="torch device; unset = CUDA when available, else CPU.")
    method: str | None = Field(default=None, description="rl | opd | combined (default combined).")
    w_rl: float | None = None
    w_opd: float | None = None
    rl_baseline: bool | None = Field(default=None, description="Subtract the batch-mean reward of the RL samples.")
    lr: float | None = None
    batch_size: int | None = None
    steps_per_batch: int | None = None
    kl_coef: float | None = None
    topk: int | None = None
    seed: int | None = None
    w_retain: float | None = Field(default=None, description="Weight of the retain set in every step (0 = off).")
    retain_samples: int | None = Field(default=None, description="Answers sampled from the retain set per round.")
    hint_demos: int | None = Field(default=None, description="Hinted-teacher answers per context of a hinted "
                                   "conversation (0 = off); see learner/demos.py.")
    w_demo: float | None = Field(default=None, description="Weight of the hint demonstrations in every step.")
    demo_honoured_only: bool | None = Field(default=None, description="Learn only the demonstrations that do what "
                                            "the hint asks, where labeler.styles can read it, and neither loop nor "
                                            "guess (default on).")
    retain_file: Path = Field(default=DEFAULT_RETAIN, description="Retain set: instruction prompts (JSONL) whose "
                              "answers stay the base model's; see learner/retain.py.")
    learner_group: str = Field(default="learner", description="Consumer group on the samples stream.")
    learner_consumer: str = Field(default="learner-1", description="Consumer name (a restart resumes its backlog).")
    learner_claim_idle_ms: int = Field(default=600_000, description="Take over another consumer's entries idle this long.")
    learner_max_samples: int = Field(default=100_000, description="Most stream entries one --once run reads.")
    learner_poll_ms: int = Field(default=1000, description="Continuous mode: blocking read timeout.")
    learner_metrics_port: int = Field(default=9465, description="Continuous mode: Prometheus port (0 = none).")
    learner_gate: bool = Field(default=True, description="Hand every published candidate to the gate.")
    learner_retries: int = Field(default=2, description="Rounds the samples of a candidate that will never be stable "
                                 "(gate failed, rejected, rolled back) join again.")
    learner_round_max: int = Field(default=16, description="Continuous mode: most new samples one round trains (the "
                                   "oldest first; the rest wait for the next round): a learner that fell behind "
                                   "does not take one step per sample of its backlog at once.")
    learner_recall: int = Field(default=256, description="Continuous mode: how many trained samples are remembered for that.")


def auto_preset(base_model: str, device: str) -> str:
    """gpu on CUDA; on CPU tiny for the built-in tiny model (by name or directory), else small."""
    if device.startswith("cuda"):
        return "gpu"
    if base_model == BUILTIN_TINY or (Path(base_model).expanduser() / "nextstate_tiny.json").is_file():
        return "tiny"
    return "small"


def build_config(settings: LearnerSettings, device: str) -> TrainConfig:
    overrides = {name: getattr(settings, name) for name in CONFIG_FIELDS if getattr(settings, name) is not None}
    preset = settings.preset if settings.preset != "auto" else auto_preset(settings.base_model, device)
    presets = {"tiny": TrainConfig.tiny, "small": TrainConfig.small, "gpu": TrainConfig.gpu}
    if preset not in presets:
        raise ValueError(f"preset must be one of {[*presets, 'auto']}, got {preset!r}")
    return presets[preset](**overrides)
