"""The retain set: the parent's answers to explicit instructions stay likely while a preference is learned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from learner.config import TrainConfig
from learner.data import Entry, build_item
from learner.logprobs import batch_logprobs
from learner.modeling import load_model, render_prompt_ids
from learner.retain import DEFAULT_RETAIN, load_prompts, sample_retain
from learner.tinycorpus import STYLES, find_style_request, render_answer, with_instruction
from learner.train import attach_adapter, train
from tests.learner.test_train_effects import END, sample, split_facts


def test_bundled_retain_set_holds_instructions_of_every_style() -> None:
    conversations = load_prompts(DEFAULT_RETAIN)
    asked = [find_style_request(c[-1]["content"]) for c in conversations]
    assert len(conversations) >= 30 and None not in asked and set(asked) == set(STYLES)


def test_a_bad_line_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "retain.jsonl"
    bad.write_text('# comment\n{"prompt": "Use bullet points."}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match=r"retain.jsonl:3: expected"):
        load_prompts(bad)


def test_sampled_answers_come_from_the_model(tiny_model_path: Path) -> None:
    model, tokenizer = load_model(tiny_model_path, "cpu")
    conversations = load_prompts(DEFAULT_RETAIN)[:3]
    items = sample_retain(model, tokenizer, conversations, TrainConfig.tiny(retain_samples=5), seed=1)
    assert len(items) == 5  # more answers than prompts: the prompts are cycled
    assert {tuple(i.prompt_ids) for i in items} <= {tuple(render_prompt_ids(tokenizer, c)) for c in conversations}
    assert all(i.response_ids and i.response_ids[-1] in (tokenizer.eos_token_id, tokenizer.pad_token_id) for i in items[:1])
    assert sample_retain(model, tokenizer, conversations, TrainConfig.tiny(w_retain=0.0), seed=1) == []


def instructed_logp(model: Any, tokenizer: Any, facts: list[Any]) -> float:
    """Mean per-token log-likelihood of the right answer to each fact asked with an explicit instruction."""
    prompts, answers = [], []
    for k, fact in enumerate(facts):
        style = STYLES[k % len(STYLES)]
        messages = [{"role": "user", "content": with_instruction(fact.question(1), style, variant=k % 4)}]
        prompts.append(render_prompt_ids(tokenizer, messages))
        answers.append(tokenizer(render_answer(fact, style) + END, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        out = batch_logprobs(model, prompts, answers, pad_id=tokenizer.pad_token_id)
    return float(((out.logp_B_T * out.mask_B_T).sum(-1) / out.mask_B_T.sum(-1)).mean())


@pytest.mark.slow
def test_retain_keeps_explicit_instructions_while_avoid_samples_push(tiny_model_path: Path) -> None:
    """Avoid samples trained hard (the pace of a short benchmark) spread probability anywhere; the retain
    term keeps held-out instructed answers close to the parent's, the preference still moves."""
    _, tokenizer = load_model(tiny_model_path, "cpu")
    train_facts, held_out = split_facts()
    samples = [sample(i, f, render_answer(f, STYLES[i % 4]), "avoid", -1, hint="Use bullet points.")
               for i, f in enumerate(train_facts[:8])]
    items = [build_item(Entry(str(i), s), tokenizer, method="combined", parent_version=None, max_prompt_tokens=512,
                        max_response_tokens=256) for i, s in enumerate(samples)]
    results = {}
    for w_retain in (0.0, 1.0):
        config = TrainConfig.tiny(batch_size=4, steps_per_batch=4, lr=5e-3, w_retain=w_retain, retain_samples=32)
        model = attach_adapter(load_model(tiny_model_path, "cpu")[0], config, None)
        before = instructed_logp(model, tokenizer, held_out)
        retain = sample_retain(model, tokenizer, load_prompts(DEFAULT_RETAIN), config, seed=1)
        result = train(model, items, config, pad_id=tokenizer.pad_token_id, retain=retain)
        results[w_retain] = (before, instructed_logp(model, tokenizer, held_out), result.metrics)
    print(f"\ninstructed answers, mean log-likelihood per token (before, after): without retain "
          f"{results[0.0][:2]}, with retain {results[1.0][:2]}")
    lost_without = results[0.0][0] - results[0.0][1]
    lost_with = results[1.0][0] - results[1.0][1]
    assert lost_with < 0.5 * lost_without, (lost_with, lost_without)
    assert results[1.0][2]["retain_samples"] == 32 and results[1.0][2]["logp_delta_avoid"] < 0  # avoid still fell
