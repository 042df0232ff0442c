"""The judge interface shared by the llm and the embedded judges, and the errors they raise.

    JudgeError                 base of the labeler's judge errors
    ├── JudgeUnavailable       retryable: the judge could not be reached or timed out on every vote
    └── JudgeMisconfigured     not retryable: the judge cannot be built from the settings
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from labeler.settings import LabelerSettings
from labeler.tally import Tally, tally


class JudgeError(Exception):
    """Base of the judge errors."""

    retryable = False


class JudgeUnavailable(JudgeError, ConnectionError):
    """No vote could be obtained (connection refused, timeouts, server errors): retry later."""

    retryable = True


class JudgeMisconfigured(JudgeError, ValueError):
    """The settings do not describe a usable judge."""


@dataclass(frozen=True)
class Verdict:
    """What one judge said about one transition."""

    votes: list[int | None]
    """Each vote's verdict, None for an invalid or failed vote."""
    hints: list[str | None]
    """Hint candidates (None where a hint vote found nothing); the caller selects one."""
    model: str
    prompt_version: str
    truncated: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    """Why votes failed (timeouts, HTTP errors), for the record."""

    def tally(self) -> Tally:
        return tally(self.votes)


class Judge(Protocol):
    """Judges a transition: the turn's request messages, the assistant message and the next state."""

    model: str

    def judge(self, messages: Sequence[Mapping[str, Any]], response: Mapping[str, Any],
              next_state: Sequence[Mapping[str, Any]], extra_next_state: str | None = None) -> Verdict:
        """``extra_next_state``: more evidence shown with the next state (an explicit rating)."""
        ...


def build_judge(settings: LabelerSettings, *, strong: bool = False) -> Judge:
    """The judge the settings name; ``strong=True`` builds the offline hard-case judge."""
    if strong:
        from labeler.llm_judge import LLMJudge

        if not settings.strong_model:
            raise JudgeMisconfigured("the strong judge needs a model (--model or NEXTSTATE_STRONG_MODEL)")
        return LLMJudge.from_settings(settings, model=settings.strong_model, api_base=settings.strong_api_base,
                                      api_key=settings.strong_api_key)
    if settings.judge == "llm":
        from labeler.llm_judge import LLMJudge

        return LLMJudge.from_settings(settings)
    from labeler.embedded import EmbeddedJudge

    return EmbeddedJudge.from_settings(settings)
