"""The sacred eval suite: a JSONL file of prompts with must-hold checks, and how an answer is scored.

One case per line: ``{"id", "messages" | "prompt", "checks": [{"type", "value"}], "samples"?,
"max_tokens"?, "temperature"?}`` with check types ``contains``, ``not_contains``, ``regex``,
``max_words``, ``exact`` and ``no_guesses`` (every bare name in the answer's list lines matches the
regex ``value``: "1. Tokyo\n2. Kyoto\n3. Osaka" names the capital of Japan and does not say which it is,
and a model taught lists learns such answers); or an anchor ``{"id", "anchor": true, "messages" | "prompt"}``: a neutral
prompt on which the gate measures drift. Pure Python: the gate runs the model, this only judges text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from registry.collapse import LIST_MARKER
from registry.errors import RegistryError

CheckType = Literal["contains", "not_contains", "regex", "max_words", "exact", "no_guesses"]
_NAME_WORD = re.compile(r"[a-z0-9']+")
GUESS_WORDS = 2
"""A list line of at most this many words (after a "label:") is a bare name: a guess, not a statement."""


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


def name_words(text: str) -> list[str]:
    """The lower-cased words of ``text`` as ``guesses`` names them."""
    return _NAME_WORD.findall(text.lower())


def guesses(answer: str, prompt: str) -> list[str]:
    """The distinct bare names among the answer's list lines ("Tokyo", "Kyoto"; the value after a label such
    as "Capital: Tokyo"), lower-cased, leaving out those the prompt itself says."""
    asked = set(name_words(prompt))
    names: list[str] = []
    for line in answer.splitlines():
        marker = LIST_MARKER.match(line)
        if marker is None:
            continue
        said = name_words(line[marker.end():].rsplit(":", 1)[-1])
        if said and len(said) <= GUESS_WORDS and not set(said) <= asked and " ".join(said) not in names:
            names.append(" ".join(said))
    return names


def check_answer(answer: str, check: Check, prompt: str = "") -> bool:
    """Does ``answer`` (to ``prompt``) satisfy ``check``?"""
    text, value = answer.strip(), check.value
    if check.type == "max_words":
        return len(text.split()) <= int(value)
    value = str(value)
    if check.type == "no_guesses":
        named = guesses(text, prompt)
        flags = re.IGNORECASE if check.ignore_case else 0
        return len(named) < 2 or all(re.search(value, name, flags=flags) for name in named)
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
    last = case.messages[-1].get("content") if case.messages else ""
    prompt = last if isinstance(last, str) else ""
    return all(check_answer(answer, check, prompt) for check in case.checks)


def score(answers: list[str], case: SacredCase) -> float:
    """Share of the sampled answers that satisfy every check of the case."""
    return sum(passes(a, case) for a in answers) / len(answers) if answers else 0.0
