"""A tool-calling model for tests: ``builtin:tiny-chat`` taught, by a few seconds of full fine-tuning on
the conversations given, to answer them word for word (its chat template already renders tools and
calls in the ChatML/hermes form).

It stands in for a tool-calling model such as Qwen behind the embedded policy server: the server, its
template rendering, its tool-call parsing and everything after it run for real on its answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from learner.modeling import load_model, render_prompt_ids


def teach(base: Path, out: Path, lessons: Sequence[tuple[list[dict[str, Any]], list[dict[str, Any]], str]],
          steps: int = 300, lr: float = 3e-3) -> Path:
    """Fine-tune ``base`` until each (messages, tools, answer) lesson is answered with ``answer``; save to ``out``."""
    torch.manual_seed(0)
    model, tokenizer = load_model(base, device="cpu")
    model.train()
    rows = []
    for messages, tools, answer in lessons:
        prompt = render_prompt_ids(tokenizer, messages, tools)
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        target = [*tokenizer(answer, add_special_tokens=False)["input_ids"], end]
        rows.append((torch.tensor([prompt + target]), len(prompt)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        for ids, start in rows:
            logits = model(input_ids=ids).logits[0, start - 1:-1]
            torch.nn.functional.cross_entropy(logits, ids[0, start:]).backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
