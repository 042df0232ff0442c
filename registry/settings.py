"""Settings of the registry's processes (CLI, admin app, canary controller), read once per process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from proxy.settings import CommonSettings


class RegistrySettings(CommonSettings):
    adapters_dir: Path | None = Field(default=None, description="Version store; unset = <home>/adapters.")
    base_model: str = Field(default="builtin:tiny-chat", description="Base model id (names versions <base>@vN).")
    served_base_model: str | None = Field(default=None, description="Name the policy server serves the base under; unset = derived from base_model.")
    policy_urls: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Policy-server replicas to publish adapters to (comma-separated or a JSON list).")
    upstream_url: str | None = Field(default=None, description="Used as the only replica when policy_urls is empty.")
    publish_timeout: float = Field(default=120.0, description="Seconds allowed for one load/unload call.")
    drain_seconds: float = Field(default=30.0, description="Delay before an unreferenced adapter is unloaded.")
    # canary controller
    canary_steps: Annotated[list[float], NoDecode] = Field(default_factory=lambda: [0.05, 0.25, 0.5], description="Traffic fraction schedule.")
    canary_step_samples: int = Field(default=30, description="Labeled canary turns required at a step before the next.")
    canary_step_seconds: float = Field(default=0.0, description="Minimum time at each step before the next.")
    canary_min_samples: int = Field(default=50, description="Labeled canary turns before promotion is considered.")
    canary_margin: float = Field(default=0.1, description="Non-inferiority margin delta on the prefer rate.")
    canary_alpha: float = Field(default=0.05, description="Error probability of the sequential test (confidence 1 - alpha).")
    canary_deadline_seconds: float = Field(default=86400.0, description="Inconclusive after this long: reject.")
    canary_max_error_rate: float = Field(default=0.05, description="Roll back above this upstream error rate.")
    canary_max_p99_ms: float = Field(default=30000.0, description="Roll back above this p99 latency (ms).")
    canary_health_min_requests: int = Field(default=20, description="Requests needed before health bounds apply.")
    # the canary of a personal learning scope (registry.personal_canary)
    personal_canary_fraction: float = Field(default=1.0, description="Share of a user's conversations a personal candidate serves (stable's evidence: the user's turns on it before the candidate).")
    personal_canary_inherit_weight: float = Field(default=0.5, ge=0.0, le=1.0, description="Personal scope: weight of each labeled turn a candidate inherits from the candidates it replaced (trained into it).")
    personal_canary_margin: float = Field(default=0.1, description="Personal scope: how much lower the candidate's prefer rate may be than stable's.")
    personal_canary_confidence: float = Field(default=0.9, description="Personal scope: posterior probability that claim needs (Beta(1,1) prior).")
    personal_canary_min_labeled: int = Field(default=3, description="Personal scope: labeled candidate turns before promotion.")
    personal_canary_rollback_run: int = Field(default=3, description="Personal scope: this many newest candidate turns all negative roll it back.")
    personal_canary_max_labeled: int = Field(default=12, description="Personal scope: labeled candidate turns after which an undecided canary is rejected.")
    personal_canary_stable_min: int = Field(default=6, description="Personal scope: labeled stable turns an inconclusive verdict needs; with fewer the candidate shares the user's conversations with stable and is rejected only at twice max_labeled.")
    personal_canary_share_fraction: float = Field(default=0.5, gt=0.0, le=1.0, description="Personal scope: share of the user's conversations a candidate keeps while stable's evidence is gathered.")
    # sacred gate (the learner's settings inherit these; `nextstate gate` reads them too)
    gate_suite: Path | None = Field(default=None, description="Sacred suite JSONL; unset = the suite shipped for the base model (learner/sacred: tiny.jsonl for the built-in tiny model, chat.jsonl for any other).")
    gate_samples: int = Field(default=8, description="Sampled answers per sacred case and policy.")
    gate_temperature: float = Field(default=0.7, description="Sampling temperature of sacred answers.")
    gate_max_tokens: int = Field(default=96, description="Longest sacred answer.")
    gate_sacred_tolerance: float = Field(default=0.25, description="Allowed drop of a case's pass rate.")
    gate_sacred_alpha: float = Field(default=0.05, description="A drop fails only when a one-sided Fisher exact test "
                                     "puts its chance below this.")
    gate_suite_tolerance: float = Field(default=0.05, description="Allowed drop of the pass rate pooled over all cases.")
    gate_replay_max: int = Field(default=200, description="Most recent held-out samples replayed.")
    gate_replay_min_samples: int = Field(default=4, description="Held-out samples per class before it is judged.")
    gate_replay_tolerance: float = Field(default=0.05, description="Allowed wrong-way move of mean log-likelihood "
                                         "(nats): over the handful of held-out samples a new scope has, the replay moves "
                                         "by a few hundredths on noise alone (measured 0.0002 to 0.09).")
    gate_recall_max: int = Field(default=16, description="The scope's newest requests whose answers its users accepted "
                                 "(content with them, or corrected only in form) that the gate asks both sides again: "
                                 "a candidate that no longer says them (their key word) fails. 0 turns the check off.")
    gate_recall_min_requests: int = Field(default=6, description="Such requests with a key word before the recall is judged.")
    gate_max_kl: float = Field(default=0.5, description="Bound on mean per-token KL(candidate||stable) on anchors.")
    gate_seed: int = Field(default=0, description="Seed of the gate's sampling.")
    gate_auto_canary: bool = Field(default=True, description="Start a canary right after a passing verdict.")
    retention_interval_s: float = Field(default=3600.0, gt=0, description="How often the controller trims the streams to NEXTSTATE_RETENTION_DAYS.")
    controller_interval: float = Field(default=10.0, description="Seconds between controller ticks.")
    staging_grace_s: float = Field(default=3600.0, gt=0, description="A publish's leftover directory (staging, or a "
                                   "version never recorded) unchanged this long is removed (registry.sweep).")

    @field_validator("policy_urls", "canary_steps", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return json.loads(value) if value.startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
        return value

    def adapters_path(self) -> Path:
        return (self.adapters_dir or self.home_dir() / "adapters").expanduser()

    def replicas(self) -> list[str]:
        return list(self.policy_urls) or ([self.upstream_url] if self.upstream_url else [])

    def served_base(self) -> str:
        return self.served_base_model or self.base_model.replace("builtin:", "")
