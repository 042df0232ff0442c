"""Pure decisions of the labeler: parse a judge answer, tally votes, classify, pick a hint.

No I/O here; every function is tested with literal tables.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from labeler.records import SampleClass

_BOXED = re.compile(r"\\boxed\{\s*([+-]?\d+)\s*\}")
_HINT = re.compile(r"\[HINT_START\](.*?)\[HINT_END\]", re.DOTALL)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")


def parse_vote(text: str | None) -> int | None:
    """The judge's verdict: the value its answer boxes (``\\boxed{1|-1|0}``), None when absent or invalid.

    An answer that boxes two different values is not a verdict but a judge that lists the options or
    changes its mind (weak self-judges do both; boxes inside the data are defused before the judge sees
    them): invalid, so it can only cost a vote, never give a wrong one. A value outside {1, -1, 0} is
    invalid too.
    """
    if not text:
        return None
    found = {int(v) for v in _BOXED.findall(text)}
    if len(found) != 1:
        return None
    value = found.pop()
    return value if value in (1, -1, 0) else None


@dataclass(frozen=True)
class Tally:
    reward: int
    """Majority vote (+1 / -1 / 0); ties and all-invalid give 0."""
    agreement: float
    """Votes for the winner over all votes cast, invalid ones included (0.0 when nothing valid)."""
    valid: int
    """Number of valid votes."""


def tally(votes: Sequence[int | None]) -> Tally:
    """Majority of the valid votes; a tie between the top values, or no valid vote, gives 0."""
    valid = [v for v in votes if v is not None]
    if not valid:
        return Tally(reward=0, agreement=0.0, valid=0)
    counts = Counter(valid).most_common()
    top_value, top_count = counts[0]
    if len(counts) > 1 and counts[1][1] == top_count:
        return Tally(reward=0, agreement=top_count / len(votes), valid=len(valid))
    return Tally(reward=top_value, agreement=top_count / len(votes), valid=len(valid))


@dataclass(frozen=True)
class Classification:
    cls: SampleClass
    hard: bool
    reason: str | None
    """Why the sample is observation-only or hard; None for a clean prefer/avoid."""


def classify(reward: int, agreement: float, *, tau: float = 2 / 3, tau_hard: float = 2 / 3,
             has_next_state: bool = True, failed: bool = False) -> Classification:
    """prefer: +1 with agreement >= tau; avoid: -1 with agreement >= tau; otherwise observation.

    A hard case (sent to the strong judge) is a judge failure or an agreement below ``tau_hard``
    on a transition that has a next state to judge.
    """
    if failed:
        return Classification("observation", True, "judge_failed")
    if not has_next_state:
        return Classification("observation", False, "no_next_state")
    hard = agreement < tau_hard
    if reward != 0 and agreement >= tau:
        return Classification("prefer" if reward > 0 else "avoid", hard, "low_agreement" if hard else None)
    if reward != 0:
        return Classification("observation", hard, "low_agreement")
    return Classification("observation", hard, "split_vote" if hard else "neutral")


def extract_hint(text: str | None) -> str | None:
    """The hint between ``[HINT_START]`` and ``[HINT_END]`` (the last pair), stripped; None if absent."""
    if not text:
        return None
    found = _HINT.findall(text)
    if not found:
        return None
    hint = " ".join(found[-1].split())
    return hint or None


def count_sentences(text: str) -> int:
    """Sentences of a short text: pieces ended by . ! ? (or their CJK forms)."""
    return len([part for part in _SENTENCE_SPLIT.split(text.strip()) if part.strip()])


def accept_hint(hint: str | None, min_chars: int = 8, max_sentences: int = 3) -> bool:
    """A hint is accepted when it is at least ``min_chars`` long and has 1 to ``max_sentences`` sentences."""
    if not hint:
        return False
    hint = hint.strip()
    return len(hint) >= min_chars and count_sentences(hint) <= max_sentences


def select_hint(candidates: Sequence[str | None], min_chars: int = 8, max_sentences: int = 3) -> str | None:
    """The longest accepted candidate (first one on equal length); None when none is accepted."""
    best: str | None = None
    for candidate in candidates:
        if accept_hint(candidate, min_chars, max_sentences) and (best is None or len(candidate.strip()) > len(best)):  # type: ignore[union-attr]
            best = candidate.strip()  # type: ignore[union-attr]
    return best


def disagrees(judge_reward: int, feedback_rating: int) -> bool:
    """Explicit feedback and the judge disagree when the judge gave the opposite sign (a 0 is no verdict)."""
    return judge_reward == -feedback_rating
