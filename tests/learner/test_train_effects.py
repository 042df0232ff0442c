"""Real learning effects on the built-in tiny model (CPU): measured on held-out prompts, thresholds asserted.

- Binary RL: prefer lowercase answers, avoid detailed ones -> on questions never trained on, the
  preferred style's log-likelihood rises and the avoided style's falls.
- Hindsight OPD: the model's own un-hinted answers, with the hint "Answer in lowercase." -> the
  un-hinted model answers held-out questions in lowercase more often.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from labeler.records import SampleRecord
from learner.config import TrainConfig
from learner.data import Entry, build_item
from learner.logprobs import adapter_disabled, batch_logprobs
from learner.modeling import load_model, render_prompt_ids
from learner.tinycorpus import FACTS, Fact, classify_style, render_answer
from learner.train import attach_adapter, train

END = "<|im_end|>"


def split_facts(seed: int = 7) -> tuple[list[Fact], list[Fact]]:
    facts = list(FACTS)
    random.Random(seed).shuffle(facts)
    return facts[:24], facts[24:40]


def messages(fact: Fact) -> list[dict[str, Any]]:
    return [{"role": "user", "content": fact.question(0)}]


def sample(i: int, fact: Fact, text: str, cls: str, reward: int, hint: str | None = None) -> SampleRecord:
    return SampleRecord(record_id=f"t{i}:r0", sample_id=f"t{i}", turn_id=f"t{i}", session_id="s", cls=cls,  # type: ignore[arg-type]
                        reward=reward, hint=hint, messages=messages(fact), response={"role": "assistant", "content": text})


def style_logp(model: Any, tokenizer: Any, facts: list[Fact], style: str) -> tuple[float, float]:
    """Mean over facts of the log-likelihood of the ``style`` answer (with its end token): sequence, per token."""
    prompts = [render_prompt_ids(tokenizer, messages(f)) for f in facts]
    responses = [tokenizer(render_answer(f, style) + END, add_special_tokens=False)["input_ids"] for f in facts]
    with torch.no_grad():
        out = batch_logprobs(model, prompts, responses, pad_id=tokenizer.pad_token_id)
    sequence = out.logp_B_T.sum(-1)
    return float(sequence.mean()), float((sequence / out.mask_B_T.sum(-1)).mean())


def generate(model: Any, tokenizer: Any, fact: Fact, sample_seed: int | None = None) -> str:
    ids = torch.tensor([render_prompt_ids(tokenizer, messages(fact))])
    kwargs: dict[str, Any] = {"do_sample": False}
    if sample_seed is not None:
        torch.manual_seed(sample_seed)
        kwargs = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=48,
                             eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
                             pad_token_id=tokenizer.pad_token_id, **kwargs)
    return str(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)).strip()


def lowercase_rate(model: Any, tokenizer: Any, facts: list[Fact]) -> float:
    return sum(classify_style(generate(model, tokenizer, f)) == "lowercase" for f in facts) / len(facts)


@pytest.fixture(scope="module")
def tiny(tiny_model_path: Path) -> tuple[Path, Any]:
    _, tokenizer = load_model(tiny_model_path, "cpu")
    return tiny_model_path, tokenizer


def fresh(path: Path, config: TrainConfig) -> Any:
    model, _ = load_model(path, "cpu")
    return attach_adapter(model, config, None)


@pytest.mark.slow
def test_prefer_avoid_moves_held_out_likelihood(tiny: tuple[Path, Any]) -> None:
    path, tokenizer = tiny
    train_facts, held_out = split_facts()
    config = TrainConfig.tiny(method="rl", batch_size=4, steps_per_batch=2, lr=2e-3)
    samples = [sample(i, f, render_answer(f, "lowercase"), "prefer", 1) for i, f in enumerate(train_facts[:12])]
    samples += [sample(100 + i, f, render_answer(f, "detail"), "avoid", -1) for i, f in enumerate(train_facts[12:])]
    random.Random(0).shuffle(samples)
    items = [build_item(Entry(str(i), s), tokenizer, method="rl", parent_version=None, max_prompt_tokens=512,
                        max_response_tokens=256) for i, s in enumerate(samples)]
    model = fresh(path, config)
    with adapter_disabled(model):
        before = {s: style_logp(model, tokenizer, held_out, s) for s in ("lowercase", "detail")}
    result = train(model, items, config, pad_id=tokenizer.pad_token_id)
    after = {s: style_logp(model, tokenizer, held_out, s) for s in ("lowercase", "detail")}
    delta = {s: (after[s][0] - before[s][0], after[s][1] - before[s][1]) for s in before}
    print(f"\nRL held-out log-likelihood (sequence, per token): before {before}, after {after}, delta {delta}; "
          f"metrics {result.metrics}")
    assert result.refused is None
    assert delta["lowercase"][0] > 0.05, delta  # the preferred style, on questions never trained on
    assert delta["detail"][0] < -1.0, delta


@pytest.mark.slow
def test_opd_with_lowercase_hint_moves_unhinted_model_to_lowercase(tiny: tuple[Path, Any]) -> None:
    path, tokenizer = tiny
    train_facts, held_out = split_facts()
    config = TrainConfig.tiny(method="opd", batch_size=4, steps_per_batch=2, lr=2e-3)
    model = fresh(path, config)
    with adapter_disabled(model):
        before = lowercase_rate(model, tokenizer, held_out)
        answers = [(f, generate(model, tokenizer, f, sample_seed=k)) for k, f in enumerate(train_facts)]
    samples = [sample(i, f, text, "avoid", -1, hint="Answer in lowercase.") for i, (f, text) in enumerate(answers)]
    items = [build_item(Entry(str(i), s), tokenizer, method="opd", parent_version=None, max_prompt_tokens=512,
                        max_response_tokens=256) for i, s in enumerate(samples)]
    result = train(model, items, config, pad_id=tokenizer.pad_token_id)
    after = lowercase_rate(model, tokenizer, held_out)
    print(f"\nOPD lowercase rate on {len(held_out)} held-out questions: before {before:.2f}, after {after:.2f}; "
          f"train answers already lowercase: {sum(classify_style(t) == 'lowercase' for _, t in answers)}/{len(answers)}; "
          f"metrics {result.metrics}")
    assert result.refused is None
    assert after >= before + 0.3, (before, after)
