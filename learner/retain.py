"""What personalisation must not change: the base model's answers to explicit instructions.

Learning a user's default answer style must not break an explicit request ("Answer in one word."),
which is what the sacred gate checks — and a few samples trained hard enough do break it, most of
all through avoid samples, whose probability mass goes anywhere. So each round samples answers to a
retain set of instruction prompts (before any update) and adds ``w_retain`` times their mean per-token
negative log-likelihood to every optimiser step: an unbiased Monte-Carlo gradient of the forward
KL(reference ‖ candidate) on those prompts, i.e. the candidate is pulled back to the reference's
behaviour there and nowhere else. The reference is the frozen base model (``retain_from="base"``,
adapter disabled) by default: pulled towards its parent instead, each version of a chain kept what
its parent had already lost, and the losses added up (PrefBench samples replayed offline, lr 3e-3 x 3,
after 24 samples, bullets / lowercase / one-word personas: sacred-suite pass rate 0.67 / 0.91 / 0.78 and
fact accuracy on fresh prompts 0.72 / 0.86 / 0.72 towards the parent with ``w_retain`` 1; 0.95 / 0.92 / 0.83
and 0.91 / 0.95 / 0.80 towards the base with ``w_retain`` 2, the tiny preset).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learner.config import TrainConfig
from learner.logprobs import sampling
from learner.modeling import render_prompt_ids, sample_answers

DEFAULT_RETAIN = Path(__file__).parent / "retain" / "instructions.jsonl"


@dataclass(frozen=True)
class RetainItem:
    prompt_ids: list[int]
    response_ids: list[int]


def load_prompts(path: Path) -> list[list[dict[str, Any]]]:
    """Conversations of a JSONL file (``{"prompt"}`` or ``{"messages"}`` per line, ``#`` comments)."""
    conversations: list[list[dict[str, Any]]] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
            messages = row["messages"] if "messages" in row else [{"role": "user", "content": row["prompt"]}]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: expected {{\"prompt\"}} or {{\"messages\"}}: {exc}") from exc
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{path}:{number}: 'messages' must be a non-empty list")
        conversations.append(messages)
    return conversations


def sample_retain(model: Any, tokenizer: Any, conversations: list[list[dict[str, Any]]], config: TrainConfig,
                  seed: int) -> list[RetainItem]:
    """``config.retain_samples`` answers to prompts drawn from ``conversations``: the base model's (the adapter
    of ``model`` disabled) or, with ``retain_from="parent"``, those of ``model`` as it is (the parent)."""
    if config.w_retain <= 0 or config.retain_samples <= 0 or not conversations:
        return []
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    drawn = [conversations[order[i % len(order)]] for i in range(config.retain_samples)]
    with sampling(model, base=config.retain_from == "base"):
        answers = sample_answers(model, tokenizer, drawn, 1, config.retain_temperature, config.retain_max_tokens, seed)
    items = []
    for messages, answer in zip(drawn, answers, strict=True):
        if answer:
            items.append(RetainItem(render_prompt_ids(tokenizer, messages)[-config.max_prompt_tokens:], answer))
    return items
