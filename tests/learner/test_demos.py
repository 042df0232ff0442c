"""Hint demonstrations: which contexts a hint is demonstrated on, the teacher's answers, their effect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labeler.records import SampleRecord
from learner.config import TrainConfig
from learner.data import Entry, build_item
from learner.demos import demo_contexts, sample_demos, worth_learning
from learner.logprobs import adapter_disabled
from learner.modeling import load_model
from learner.tinycorpus import classify_style
from learner.train import attach_adapter, train
from tests.learner.test_train_effects import generate, sample, split_facts, style_logp

BULLETS = "Answer as a bullet list."


def _sample(i: int, session: str, hint: str | None = None, question: str = "What color is snow?") -> SampleRecord:
    return SampleRecord(record_id=f"t{i}:r0", sample_id=f"t{i}", turn_id=f"t{i}", session_id=session,
                        cls="avoid" if hint else "prefer", reward=-1 if hint else 1, hint=hint,  # type: ignore[arg-type]
                        messages=[{"role": "user", "content": question}],
                        response={"role": "assistant", "content": "Snow is white."})


def test_contexts_of_a_hinted_conversation_get_its_latest_hint() -> None:
    samples = [_sample(0, "a"), _sample(1, "b", "Answer in lowercase."), _sample(2, "a", "Use bullet points."),
               _sample(3, "c"), _sample(4, "a", BULLETS)]
    assert demo_contexts(samples) == [(0, BULLETS), (1, "Answer in lowercase."), (2, BULLETS), (4, BULLETS)]
    # batch scope: a conversation without a hint gets the batch's latest one
    assert demo_contexts(samples, "batch") == [(0, BULLETS), (1, "Answer in lowercase."), (2, BULLETS), (3, BULLETS),
                                               (4, BULLETS)]
    assert demo_contexts([_sample(0, "a"), _sample(1, "b")], "batch") == []  # no hint, nothing to demonstrate


JAPAN = "What is the capital of Japan?"
SAID = "The capital of Japan is Tokyo."


@pytest.mark.parametrize(("answer", "kept"), [
    ("- The capital of Japan is Tokyo.\n- Tokyo is the capital.", True),
    ("- Capital: Tokyo\n- Country: Japan", True),
    ("- Japan\n- Tokyo", True),  # names the question and the corrected answer said
    ("- Tokyo\n- Tokyo\n- Tokyo", False),  # a loop has the form and teaches a loop
    ("1. Japan\n2. Japan\n3. Japan\n4. Japan", False),
    ("1. Tokyo\n2. Kyoto\n3. Osaka", False),  # guesses: names neither the question nor the answer said
    ("The capital of Japan is Tokyo.", False),  # prose after "use bullet points"
])
def test_a_demonstration_must_not_loop_guess_or_ignore_the_hint(answer: str, kept: bool) -> None:
    assert worth_learning("Use bullet points.", answer, SAID, JAPAN) is kept


def test_names_the_corrected_answer_gave_are_no_guesses() -> None:
    question, before = "Name three primary colors.", "Red, yellow and blue."
    assert worth_learning("Use bullet points.", "- Red\n- Yellow\n- Blue", before, question)
    assert not worth_learning("Use bullet points.", "- Red\n- Green\n- Purple", before, question)
    # a hint these checks cannot read still keeps no loop
    assert worth_learning("Talk like a pirate.", "Arr, Tokyo it be.", SAID, JAPAN)
    assert not worth_learning("Talk like a pirate.", "Arr arr arr arr arr arr arr arr arr", SAID, JAPAN)


@pytest.fixture(scope="module")
def tiny(tiny_model_path: Path) -> tuple[Path, Any]:
    _, tokenizer = load_model(tiny_model_path, "cpu")
    return tiny_model_path, tokenizer


def test_the_hinted_base_model_answers_the_unhinted_prompts(tiny: tuple[Path, Any]) -> None:
    path, tokenizer = tiny
    base, _ = load_model(path, "cpu")
    config = TrainConfig.tiny(hint_demos=3, demo_scope="conversation")
    model = attach_adapter(base, config, None)
    samples = [_sample(0, "a", question="What color is grass?"), _sample(1, "a", BULLETS), _sample(2, "b")]
    prompts = [build_item(Entry(str(i), s), tokenizer, method="combined", parent_version=None, max_prompt_tokens=512,
                          max_response_tokens=256).prompt_ids for i, s in enumerate(samples)]
    every = config.replace(demo_honoured_only=False)
    demos = sample_demos(model, tokenizer, samples, prompts, every, seed=3)
    assert len(demos) == 6 and {d.hint for d in demos} == {BULLETS}
    assert [d.prompt_ids for d in demos] == [prompts[0]] * 3 + [prompts[1]] * 3  # the student's own, un-hinted prompts
    styles = [classify_style(tokenizer.decode(d.response_ids, skip_special_tokens=True)) for d in demos]
    assert styles.count("bullets") >= 5, styles  # the teacher follows the hint
    assert len(sample_demos(model, tokenizer, samples, prompts, every.replace(demo_scope="batch"), seed=3)) == 9
    assert sample_demos(model, tokenizer, samples, prompts, config.replace(hint_demos=0), seed=3) == []
    # the default keeps only the answers that are lists: the same draws, less the ones that ignored the hint
    kept = sample_demos(model, tokenizer, samples, prompts, config, seed=3)
    assert kept == [d for d, style in zip(demos, styles, strict=True) if style == "bullets"]


def test_answers_that_ignore_the_hint_are_not_demonstrated(tiny: tuple[Path, Any]) -> None:
    """The tiny model seldom follows "No capitals anywhere." (a wording it was not taught): only its
    answers with no capital letter are demonstrated, and a hint the checks cannot read keeps every answer."""
    path, tokenizer = tiny
    base, _ = load_model(path, "cpu")
    config = TrainConfig.tiny(hint_demos=4, demo_scope="conversation", demo_temperature=1.0)
    model = attach_adapter(base, config, None)
    samples = [_sample(0, "a", "No capitals anywhere.", question="What color is grass?")]
    prompts = [build_item(Entry("0", samples[0]), tokenizer, method="combined", parent_version=None,
                          max_prompt_tokens=512, max_response_tokens=256).prompt_ids]
    drawn = sample_demos(model, tokenizer, samples, prompts, config.replace(demo_honoured_only=False), seed=5)
    texts = [tokenizer.decode(d.response_ids, skip_special_tokens=True) for d in drawn]
    kept = sample_demos(model, tokenizer, samples, prompts, config, seed=5)
    assert len(drawn) == 4 and any(c.isupper() for c in "".join(texts)), texts
    assert kept == [d for d, text in zip(drawn, texts, strict=True) if text == text.lower()
                    and any(c.isalpha() for c in text)]
    free = [_sample(0, "a", "Answer like a pirate.", question="What color is grass?")]
    assert len(sample_demos(model, tokenizer, free, prompts, config, seed=5)) == 4


@pytest.mark.slow
def test_demonstrations_carry_a_rare_hint_to_held_out_questions(tiny: tuple[Path, Any]) -> None:
    """Eight of the model's own answers, one with the hint "Answer as a bullet list.": with demonstrations
    of that hint on all eight contexts (the tiny preset's batch scope), held-out questions are answered as
    bullets far more often than with the OPD term on the one hinted answer alone."""
    path, tokenizer = tiny
    train_facts, held_out = split_facts()
    results = {}
    for demos_per_context in (0, 2):
        config = TrainConfig.tiny(batch_size=8, steps_per_batch=6, lr=3e-3, hint_demos=demos_per_context)
        base, _ = load_model(path, "cpu")
        model = attach_adapter(base, config, None)
        with adapter_disabled(model):
            before = style_logp(model, tokenizer, held_out, "bullets")[0]
            answers = [(f, generate(model, tokenizer, f, sample_seed=k)) for k, f in enumerate(train_facts[:8])]
        samples = [sample(i, f, text, "avoid", -1, hint=BULLETS if i == 0 else None) for i, (f, text) in enumerate(answers)]
        items = [build_item(Entry(str(i), s), tokenizer, method="combined", parent_version=None, max_prompt_tokens=512,
                            max_response_tokens=256) for i, s in enumerate(samples)]
        demos = sample_demos(model, tokenizer, samples, [it.prompt_ids for it in items], config, seed=1)
        result = train(model, items, config, pad_id=tokenizer.pad_token_id, demos=demos)
        assert result.refused is None and result.metrics["demo_samples"] == len(demos)
        rate = sum(classify_style(generate(model, tokenizer, f, sample_seed=100 + k)) == "bullets"
                   for k, f in enumerate(held_out)) / len(held_out)
        results[demos_per_context] = (style_logp(model, tokenizer, held_out, "bullets")[0] - before, rate)
    print(f"\nheld-out bullet answers (sequence log-likelihood change, sampled share): without demonstrations "
          f"{results[0]}, with {results[2]}")
    # measured: log-likelihood +0.45 / +0.94, bullets in 3 / 9 of 16 sampled answers (without / with)
    assert results[2][1] >= results[0][1] + 0.25 and results[2][0] > results[0][0], results
