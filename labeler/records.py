"""Records the labeler writes: labeled samples, the learner's only input.

A sample is self-contained: it carries the prompt, the response, the captured tokens and the serving
version of its turn, so the learner never has to join streams. Stdlib + pydantic imports only.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from proxy.records import TokenCapture

SCHEMA_VERSION = 2  # 2: turns, samples and the routing table carry learning scopes

# The samples stream, the per-turn sample copies and the registry's keys share the hash tag ``{learn}``
# (one Redis Cluster slot): a sample revision is appended together with its copy, and the learner
# acknowledges the samples a candidate trained on in the transaction that records the candidate.
LEARNING_TAG = "{learn}"
SAMPLES_STREAM = "nextstate:{learn}:samples"
HARD_QUEUE = "hard"
LABEL_QUEUE = "label"


def sample_key(turn_id: str) -> str:
    """Key of the current (latest revision) sample of a turn."""
    return f"nextstate:{{learn}}:sample:{turn_id}"


SampleClass = Literal["prefer", "avoid", "observation"]
LabelSource = Literal["judge", "feedback", "strong_judge", "none"]


class SampleRecord(BaseModel):
    """A labeled turn. ``prefer``/``avoid`` are trained on; ``observation`` never is.

    A later label of the same turn (explicit feedback, the strong judge) is appended as a new record
    with a higher ``revision``; consumers keep the highest revision per ``turn_id``.
    """

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    record_id: str  # f"{turn_id}:r{revision}"
    sample_id: str
    revision: int = 0
    created_at: float = Field(default_factory=time.time)

    turn_id: str
    session_id: str
    transition_id: str | None = None
    serving_version: str | None = None  # registry version that served the turn, None = base
    scope: str = "global"
    """The learning scope of the turn (``proxy.scopes``): only that scope's lineage trains on it."""
    version_scope: str = "global"
    """The scope whose lineage ``serving_version`` belongs to."""

    cls: SampleClass
    reward: int  # +1 / -1 / 0
    votes: list[int] = Field(default_factory=list)
    agreement: float = 0.0
    hint: str | None = None
    source: LabelSource = "judge"
    judge_model: str | None = None
    prompt_version: str | None = None
    hard: bool = False
    reason: str | None = None  # why observation-only / hard (e.g. "judge_failed", "split_vote")
    truncated: bool = False
    timings: dict[str, float] = Field(default_factory=dict)
    previous: dict[str, Any] | None = None  # the overridden verdict, kept when a label is replaced
    # every source's verdict on this turn ("judge", "feedback", "strong_judge"); the label is the
    # verdict of the highest-precedence source present (strong_judge > feedback > judge)
    verdicts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    events: list[str] = Field(default_factory=list)  # ids of the label events applied, oldest first

    # training payload, copied from the turn
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    response: dict[str, Any]  # the assistant message
    next_state: list[dict[str, Any]] = Field(default_factory=list)
    tokens: TokenCapture = Field(default_factory=TokenCapture)

    @property
    def trainable(self) -> bool:
        return self.cls != "observation"
