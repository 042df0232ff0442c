"""Collapse on real text: statistics of sampled answers and the bounds a candidate must stay within. Pure.

Entropy and KL say a policy moved; these say whether what it now writes has degenerated. Four signals,
each compared with the stable policy's answers to the same prompts at the same seed:

- **repetition** — the share of an answer's word 3-grams that repeat an earlier 3-gram of the same
  answer (a decoding loop: "the sky is blue. the sky is blue. ..."), averaged over answers; list markers
  do not count as words, or a numbered loop ("1. Berlin 2. Berlin 3. Berlin …", which SmolLM2-135M
  learned from a user who wanted lists) would look like a list of new 3-grams;
- **self-similarity** — the mean ROUGE-L F1 between answers to *different* prompts (mode collapse: one
  answer whatever is asked);
- **degenerate length** — the share of answers that are empty (no word at all; one word is an answer) or run to the token cap
  in a loop (capped with at least ``LOOP_REPETITION`` of their 3-grams repeated): answer-length collapse
  in either direction. A capped answer alone is not one: SmolLM2-135M reached a 32-token cap in 0.51 and
  0.45 of its sacred answers under two seeds, and a learned preference for longer answers raises that;
- **anchor log-prob drift** — how far the stable policy's own answers to neutral anchor prompts fell in
  mean per-token log-likelihood under the candidate (an estimate of -KL(stable || candidate): it grows
  when the candidate drops answers stable gives, which KL(candidate || stable) on the candidate's own
  answers misses).

The bounds in ``CollapseBounds`` come from the base model's own variation: the same model on the same
sacred prompts under two sampling seeds (``python -m bench.sacred_calibrate`` prints the differences and
the anchor spread); each bound sits well above the seed-to-seed difference, so chance does not trip it,
while a degenerate candidate (a loop, one answer for everything, empty answers) moves it by far more.
Measured on SmolLM2-135M-Instruct (32 candidate cases x 4 answers, temperature 0.3, 32 tokens, seeds 0
and 1000): repeated 3-grams 0.022 / 0.027, cross-prompt ROUGE-L 0.112 / 0.115.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_WORD = re.compile(r"\w+")
LIST_MARKER = re.compile(r"^[ \t]*(?:[-*\u2022]|\d+[.)])[ \t]+", re.MULTILINE)
"""The bullet or number that starts a list line."""
MAX_COMPARED_WORDS = 200  # ROUGE-L is quadratic in length: compare the first words only


def words(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation dropped)."""
    return _WORD.findall(text.lower())


def ngram_repetition(text: str, n: int = 3) -> float:
    """Share of the word ``n``-grams of ``text`` that repeat an earlier one (0 = none, -> 1 = a loop); the
    bullets and numbers that start list lines are not words."""
    tokens = words(LIST_MARKER.sub("", text))
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (two-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 between two texts over their first ``MAX_COMPARED_WORDS`` tokens (1 = same sequence)."""
    x, y = words(a)[:MAX_COMPARED_WORDS], words(b)[:MAX_COMPARED_WORDS]
    if not x or not y:
        return 1.0 if x == y else 0.0
    lcs = lcs_length(x, y)
    return 2 * lcs / (len(x) + len(y))


def cross_prompt_similarity(answers_by_prompt: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F1 between answers to different prompts (the k-th answer of each prompt, paired)."""
    scores: list[float] = []
    for i in range(len(answers_by_prompt)):
        for j in range(i + 1, len(answers_by_prompt)):
            for a, b in zip(answers_by_prompt[i], answers_by_prompt[j], strict=False):
                scores.append(rouge_l(a, b))
    return sum(scores) / len(scores) if scores else 0.0


LOOP_REPETITION = 0.3  # share of repeated 3-grams that makes a capped answer a loop


def loops(answer: str) -> bool:
    """Whether an answer is a loop a reader would give up on: one of its lines said twice (list markers,
    case and punctuation aside: "1. Berlin\n2. Berlin"), or at least ``LOOP_REPETITION`` of its word 3-grams
    repeated."""
    lines = [" ".join(words(LIST_MARKER.sub("", line))) for line in answer.splitlines()]
    said = [line for line in lines if line]
    return len(set(said)) < len(said) or ngram_repetition(answer) >= LOOP_REPETITION


def degenerate_share(texts: Sequence[str], capped: Sequence[bool]) -> float:
    """Share of answers that are empty (no word at all) or were stopped at the token cap (``capped``) while
    looping. A one-word answer is an answer: a user may want exactly that, and the sacred suite checks
    whether it is right."""
    if not texts:
        return 0.0
    bad = sum(not t.split() or (cap and ngram_repetition(t) >= LOOP_REPETITION)
              for t, cap in zip(texts, capped, strict=True))
    return bad / len(texts)


@dataclass(frozen=True)
class TextStats:
    """What one policy's sampled answers to a set of prompts look like."""

    answers: int
    repetition: float
    """mean share of repeated word 3-grams per answer"""
    self_similarity: float
    """mean ROUGE-L F1 between answers to different prompts"""
    degenerate: float
    """share of empty (no word) or looping capped answers"""
    mean_words: float


def text_stats(answers_by_prompt: Sequence[Sequence[str]], capped_by_prompt: Sequence[Sequence[bool]]) -> TextStats:
    """The statistics of one policy's answers, grouped by prompt (``capped``: same shape, answer hit the cap)."""
    texts = [t for group in answers_by_prompt for t in group]
    capped = [c for group in capped_by_prompt for c in group]
    if not texts:
        return TextStats(0, 0.0, 0.0, 0.0, 0.0)
    return TextStats(
        answers=len(texts),
        repetition=sum(ngram_repetition(t) for t in texts) / len(texts),
        self_similarity=cross_prompt_similarity(answers_by_prompt),
        degenerate=degenerate_share(texts, capped),
        mean_words=sum(len(t.split()) for t in texts) / len(texts),
    )


@dataclass(frozen=True)
class CollapseBounds:
    """How much worse than stable a candidate's text may get (absolute rises; log-prob in nats per token)."""

    max_repetition_rise: float = 0.15
    """rise of the mean share of repeated 3-grams (seed-to-seed: 0.005 on SmolLM2-135M); a loop repeats most"""
    max_similarity_rise: float = 0.15
    """rise of the mean cross-prompt ROUGE-L (seed-to-seed: 0.003 on SmolLM2-135M); one answer for all scores 1"""
    max_degenerate_rise: float = 0.25
    """rise of the share of empty or capped answers"""
    max_anchor_logp_drop: float = 1.0
    """nats per token; SmolLM2-135M's own anchor answers (8 at T=1) sit at -2.34 +- 0.53 per answer, so a drop of
    1.0 in their mean is about five standard errors of that spread; ``max_kl`` bounds the other direction at 0.5"""


def collapse_reasons(candidate: TextStats, stable: TextStats, anchor_logp_drop: float | None,
                     bounds: CollapseBounds) -> list[str]:
    """Why the candidate's text has collapsed relative to stable's; empty when it has not."""
    reasons: list[str] = []
    if candidate.answers and stable.answers:
        rise = candidate.repetition - stable.repetition
        if rise > bounds.max_repetition_rise:
            reasons.append(f"collapse: repeated 3-grams {candidate.repetition:.2f} vs stable {stable.repetition:.2f}"
                           f" (rise > {bounds.max_repetition_rise})")
        rise = candidate.self_similarity - stable.self_similarity
        if rise > bounds.max_similarity_rise:
            reasons.append(f"collapse: answers to different prompts alike, ROUGE-L {candidate.self_similarity:.2f}"
                           f" vs stable {stable.self_similarity:.2f} (rise > {bounds.max_similarity_rise})")
        rise = candidate.degenerate - stable.degenerate
        if rise > bounds.max_degenerate_rise:
            reasons.append(f"collapse: empty or looping answers {candidate.degenerate:.2f} vs stable"
                           f" {stable.degenerate:.2f} (rise > {bounds.max_degenerate_rise})")
    if anchor_logp_drop is not None and anchor_logp_drop > bounds.max_anchor_logp_drop:
        reasons.append(f"collapse: stable's anchor answers lost {anchor_logp_drop:.3f} nats per token under the"
                       f" candidate (> {bounds.max_anchor_logp_drop})")
    return reasons
