"""The sacred eval suite: a JSONL file of prompts with must-hold checks, and how an answer is scored.

One case per line: ``{"id", "messages" | "prompt", "checks": [{"type", "value"}], "samples"?,
"max_tokens"?, "temperature"?}`` with check types ``contains``, ``not_contains``, ``regex``,
``max_words`` and ``exact``; or an anchor ``{"id", "anchor": true, "messages" | "prompt"}``: a neutral
prompt on which the gate measures drift. Pure Python: the gate runs the model, this only judges text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from registry.errors import RegistryError

CheckType = Literal["contains", "not_contains", "regex", "max_words", "exact"]


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: CheckType
    value: str | int
    ignore_case: bool = False


class SacredCase(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    messages: list[dict[str, Any]] = Field(default_factory=list)
    prompt: str | None = None
    checks: list[Check] = Field(default_factory=list)
    anchor: bool = False
    samples: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None

    @model_validator(mode="after")
    def _complete(self) -> SacredCase:
        if not self.messages:
            if self.prompt is None:
                raise ValueError("a case needs messages or a prompt")
            self.messages = [{"role": "user", "content": self.prompt}]
        if not self.anchor and not self.checks:
            raise ValueError("a case needs at least one check (or \"anchor\": true)")
        return self


def load_suite(path: Path) -> list[SacredCase]:
    """Parse the JSONL suite; a bad line is an error naming the file and line (never skipped)."""
    cases: list[SacredCase] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            cases.append(SacredCase.model_validate(json.loads(line)))
        except ValueError as exc:
            raise RegistryError(f"{path}:{number}: invalid sacred case: {exc}") from exc
    ids = [case.id for case in cases]
    if len(ids) != len(set(ids)):
        raise RegistryError(f"{path}: duplicate case ids")
    return cases


def check_answer(answer: str, check: Check) -> bool:
    """Does ``answer`` satisfy ``check``?"""
    text, value = answer.strip(), check.value
    if check.type == "max_words":
        return len(text.split()) <= int(value)
    value = str(value)
    if check.ignore_case:
        text, value = text.lower(), value.lower()
    if check.type == "contains":
        return value in text
    if check.type == "not_contains":
        return value not in text
    if check.type == "exact":
        return text == value.strip()
    return re.search(value, text, flags=re.IGNORECASE if check.ignore_case else 0) is not None


def passes(answer: str, case: SacredCase) -> bool:
    return all(check_answer(answer, check) for check in case.checks)


def score(answers: list[str], case: SacredCase) -> float:
    """Share of the sampled answers that satisfy every check of the case."""
    return sum(passes(a, case) for a in answers) / len(answers) if answers else 0.0
