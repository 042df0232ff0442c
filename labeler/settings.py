"""The labeler's settings: which judge, how many votes, thresholds, budgets, retries and workers.

Built once in each entry point (``nextstate worker``, ``nextstate label hard-cases``) from the
environment (``NEXTSTATE_`` prefix) and passed down; tests build it with keyword arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field

from proxy.settings import CommonSettings


class LabelerSettings(CommonSettings):
    """Defaults are the embedded stack's: the offline embedded judge, no API key, no GPU."""

    judge: Literal["embedded", "llm"] = Field(default="embedded", description="Which judge labels transitions.")
    judge_model: str | None = Field(
        default=None,
        description="litellm model id of the llm judge; unset = the policy server's base model (no adapter), as 'openai/<name>'.",
    )
    judge_api_base: str | None = Field(
        default=None,
        validation_alias=AliasChoices("NEXTSTATE_JUDGE_API_BASE", "NEXTSTATE_UPSTREAM_URL", "judge_api_base"),
        description="Base URL of the llm judge; defaults to the policy server's URL (the base model judges itself).",
    )
    judge_api_key: str | None = Field(default=None, description="API key of the llm judge (unset = none).")
    judge_votes: int = Field(default=3, ge=1, le=16, description="m: judge votes per transition, run in parallel.")
    judge_temperature: float = Field(default=0.7, description="Sampling temperature of the judge votes.")
    judge_max_tokens: int = Field(default=512, description="Budget of each judge answer.")
    judge_timeout_s: float = Field(default=30.0, gt=0, description="Timeout of every judge call.")
    hint_votes: int = Field(default=1, ge=0, le=16, description="Hint-judge votes per transition, run in parallel with the votes (0 = off).")
    hint_min_chars: int = Field(default=8, ge=1, description="A hint shorter than this is rejected.")
    rubric_file: Path | None = Field(default=None, description="Optional file of user guidelines injected into the judge prompt.")
    prompt_version: str = Field(default="v1", description="Version of the prompt files in labeler/prompts/.")

    tau: float = Field(default=2 / 3, ge=0, le=1, description="Agreement needed for prefer/avoid.")
    tau_hard: float = Field(default=2 / 3, ge=0, le=1, description="Agreement below this makes a hard case.")

    request_budget_chars: int = Field(default=4000, ge=64, description="Budget of the user's request shown to the judge.")
    response_budget_chars: int = Field(default=4000, ge=64, description="Budget of the assistant turn shown to the judge.")
    next_state_budget_chars: int = Field(default=4000, ge=64, description="Budget of the next state shown to the judge.")

    workers: int = Field(default=2, ge=1, description="RQ worker processes started by `nextstate worker`.")
    job_timeout_s: int = Field(default=300, ge=1, description="RQ job timeout of one labeling job.")
    job_retries: int = Field(default=3, ge=0, description="RQ retries of a labeling job before it is given up.")
    retry_intervals_s: list[int] = Field(default=[2, 10, 30], description="Seconds between retries.")
    dispatch_block_ms: int = Field(default=1000, ge=1, description="XREADGROUP block time of the dispatcher.")
    dispatch_batch: int = Field(default=100, ge=1, description="Stream entries read per dispatcher round.")
    claim_idle_ms: int = Field(default=60_000, ge=1, description="Pending entries idle this long are re-claimed.")
    maintenance_interval_s: int = Field(default=60, ge=1, description="How often RQ workers clean their registries.")
    sweep_interval_s: float = Field(default=30.0, gt=0, description="How often failed jobs are turned into observation samples.")
    consumer_group: str = Field(default="labeler", description="Consumer group of the dispatchers.")

    strong_model: str | None = Field(default=None, description="litellm model id of the strong judge for hard cases.")
    strong_api_base: str | None = Field(default=None, description="Base URL of the strong judge (unset = the provider's).")
    strong_api_key: str | None = Field(default=None, description="API key of the strong judge.")
    strong_concurrency: int = Field(default=8, ge=1, description="Hard cases judged in parallel by the batch command.")
