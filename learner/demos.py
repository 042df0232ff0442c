"""Hint demonstrations: the teacher's own answers to the contexts of the conversation a hint came from.

A hint ("Use bullet points.") says what the user wanted from the turn it corrected, and as a rule
from the rest of that conversation too. The OPD term already scores the corrected turn's own answer
with the hinted teacher; this module lets the teacher (the frozen base model, adapter disabled, the
hint appended to the last user message, as in OPD) answer the other contexts of that conversation in
the batch (or of the whole batch, see the scopes below), and the student learns those answers without the hint (mean per-token NLL,
weight ``w_demo``): whole answers of a model that knows the facts, in the style the user asked for.
Measured on the tiny model (PrefBench samples replayed offline, lr 3e-3 x 3, satisfaction on fresh
prompts after 12 / 16 / 23 samples): the one-word persona, whose few hints are the only direct word
of what it wants, 0.34 / 0.41 / 0.55 without and 0.45 / 0.56 / 0.81 with demonstrations; the bullets
and lowercase personas learn as fast either way (0.86 and 0.88 after 12); facts and sacred cases held.

An answer the teacher gave despite the hint — prose after "Use bullet points.", a longer answer after
"Make it shorter." — teaches the opposite of the correction, and one that has the form but not the answer
(SmolLM2-135M-Instruct asked for bullet points about one capital listed five others) teaches the model
to lose its facts. So where ``labeler.styles.honours`` can read what the hint asks, only answers that do
it and, for a change of form, say no more than the question and the corrected answer did are kept
(``demo_honoured_only``); other hints keep every answer. A one-word answer is judged by its one word:
of a one-word user's contexts (a PrefBench run replayed, four teacher answers each) 44 demonstrations
answered a fact question, 3 of them with another fact's answer; the 36 kept all had it right.

Whatever the hint, an answer that loops (``registry.collapse.loops``: a line said twice, or most of its
3-grams repeated) or lists names that neither the question nor the corrected answer said
(``registry.sacred.guesses``: "1. Tokyo\n2. Kyoto\n3. Osaka" for the capital of Japan) is not learned
either (``worth_learning``). Asked "Use bullet points." after a capital or opposite question (24 questions,
four answers each at 0.3), SmolLM2-135M-Instruct wrote 27 answers that ``honours`` took, 16 of them loops
("* Rome\n* Rome\n* Italy", "1. The capital of Egypt is Cairo.\n2. The capital of Egypt is Cairo. …") and 2
lists of guesses, and its candidates taught by a list-wanting user wrote loops. 9 of the 96 are kept;
after an earlier exchange 4 were taken, 3 of them loops, and 1 is kept. A system-message hint and a
repetition penalty of 1.3 both left no list at all.

Scope ``conversation`` demonstrates a hint only on its own conversation's contexts; scope ``batch`` on
every context of the batch (the latest hint of the batch where a conversation has none), which learns a
standing preference faster when every conversation is one user's (the built-in laptop set-up) but in a
shared deployment would carry one user's hint to another user's question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labeler.prompting import content_text
from labeler.records import SampleRecord
from labeler.styles import honours
from learner.config import TrainConfig
from learner.logprobs import append_hint, sampling
from learner.modeling import sample_answers
from registry.collapse import loops
from registry.sacred import guesses, name_words


@dataclass(frozen=True)
class DemoItem:
    """A teacher answer to learn: the student's own (un-hinted) prompt and the answer's token ids."""

    prompt_ids: list[int]
    response_ids: list[int]
    hint: str


def _last_user_text(messages: Sequence[dict[str, Any]]) -> str:
    return next((content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")


def worth_learning(hint: str, answer: str, before: str, question: str) -> bool:
    """Whether a teacher answer may be learned: it does not loop, does not list names neither the question
    nor the corrected answer said (guesses), and does not fail what the hint asks (``honours``). Pure."""
    if loops(answer):
        return False
    named = guesses(answer, question)
    said = set(name_words(f"{question}\n{before}"))
    if len(named) > 1 and any(not set(name.split()) <= said for name in named):
        return False
    return honours(hint, answer, before, question) is not False


def session_hints(samples: Sequence[SampleRecord]) -> dict[str, str]:
    """The latest hint of each conversation in the batch (samples are in the order they were labeled)."""
    hints: dict[str, str] = {}
    for sample in samples:
        if sample.hint and sample.hint.strip():
            hints[sample.session_id] = sample.hint.strip()
    return hints


def demo_contexts(samples: Sequence[SampleRecord], scope: str = "conversation") -> list[tuple[int, str]]:
    """(index of the sample, hint) for every sample whose conversation has a hint in the batch (scope
    ``conversation``), or for every sample, with its conversation's hint else the batch's latest (``batch``). Pure."""
    hints = session_hints(samples)
    if scope == "batch" and hints:
        latest = next(s.hint.strip() for s in reversed(samples) if s.hint and s.hint.strip())
        return [(i, hints.get(s.session_id, latest)) for i, s in enumerate(samples)]
    return [(i, hints[s.session_id]) for i, s in enumerate(samples) if s.session_id in hints]


def sample_demos(model: Any, tokenizer: Any, samples: Sequence[SampleRecord], prompt_ids: Sequence[list[int]],
                 config: TrainConfig, seed: int) -> list[DemoItem]:
    """Up to ``config.hint_demos`` teacher answers per context of a hinted conversation; [] when off or none.

    ``prompt_ids[i]`` is the student's prompt of ``samples[i]`` (the ids the training item uses).
    """
    if config.hint_demos <= 0 or config.w_demo <= 0:
        return []
    contexts = demo_contexts(samples, config.demo_scope)
    if not contexts:
        return []
    conversations = [append_hint(samples[i].messages, hint) for i, hint in contexts]
    with sampling(model, base=True):
        answers = sample_answers(model, tokenizer, conversations, config.hint_demos, config.demo_temperature,
                                 config.demo_max_tokens, seed)
    items = []
    for k, answer in enumerate(answers):  # n answers per context, contexts in order
        i, hint = contexts[k // config.hint_demos]
        if not answer:
            continue
        if config.demo_honoured_only:
            text = tokenizer.decode(answer, skip_special_tokens=True)
            before = content_text(samples[i].response.get("content"))
            if not worth_learning(hint, text, before, _last_user_text(samples[i].messages)):
                continue
        items.append(DemoItem(list(prompt_ids[i]), answer, hint))
    return items
