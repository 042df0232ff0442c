"""Choosing the next token: temperature, top-k, top-p and repetition penalties; raw logprobs.

Logprobs are those of the raw model distribution (before temperature, top-p and penalties), like
vLLM's default: the policy's own log pi(a_t | s), which is what the learner needs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    seed: int | None = None
    top_logprobs: int | None = None  # None: no logprobs; 0: the chosen token's only
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_token_ids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that names no temperature, top_p or top_k samples with (vLLM's ``--generation-config auto``)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    @classmethod
    def from_generation_config(cls, config: Any) -> SamplingDefaults:
        """The values the model's ``generation_config.json`` sets itself; the rest stay at 1.0, 1.0 and off.

        Like vLLM, only what the file sets explicitly counts (``to_diff_dict``), so a model without
        recommended sampling is served as before; ``do_sample`` is not consulted.
        """
        try:
            given = dict(config.to_diff_dict()) if config is not None else {}
        except (AttributeError, TypeError, ValueError):
            given = {}
        defaults = cls()
        temperature = given.get("temperature", defaults.temperature)
        top_p = given.get("top_p", defaults.top_p)
        top_k = given.get("top_k", defaults.top_k)
        return cls(
            temperature=float(temperature) if isinstance(temperature, int | float) and 0 <= temperature <= 2 else 1.0,
            top_p=float(top_p) if isinstance(top_p, int | float) and 0 < top_p <= 1 else 1.0,
            top_k=int(top_k) if isinstance(top_k, int) and top_k > 0 else 0,
        )


def choose_token(
    logits_V: torch.Tensor, params: SamplingParams, generator: torch.Generator | None, counts: Counter[int]
) -> tuple[int, float, list[tuple[int, float]] | None]:
    """Sample the next token; return it with its raw logprob and the top alternatives if asked."""
    logits_V = logits_V.float()
    logprobs_V = torch.log_softmax(logits_V, dim=-1)
    scores_V = logits_V
    if counts and (params.presence_penalty or params.frequency_penalty):
        ids = torch.tensor(list(counts), device=logits_V.device)
        seen = torch.tensor(list(counts.values()), device=logits_V.device, dtype=logits_V.dtype)
        scores_V = scores_V.clone()
        scores_V[ids] -= params.frequency_penalty * seen + params.presence_penalty
    if params.temperature == 0.0 or params.top_k == 1:
        token = int(torch.argmax(scores_V))
    else:
        scores_V = scores_V / params.temperature
        if params.top_k > 0:
            kth = torch.topk(scores_V, min(params.top_k, scores_V.numel())).values[-1]
            scores_V = scores_V.masked_fill(scores_V < kth, float("-inf"))
        probs_V = torch.softmax(scores_V, dim=-1)
        if params.top_p < 1.0:
            sorted_V, order_V = torch.sort(probs_V, descending=True)
            drop_V = torch.cumsum(sorted_V, dim=-1) - sorted_V > params.top_p
            probs_V = probs_V.scatter(0, order_V, sorted_V.masked_fill(drop_V, 0.0))
        token = int(torch.multinomial(probs_V, 1, generator=generator))
    top = None
    if params.top_logprobs is not None:
        values, indices = torch.topk(logprobs_V, params.top_logprobs) if params.top_logprobs else ([], [])
        top = [(int(i), float(v)) for v, i in zip(values, indices, strict=True)]
    return token, float(logprobs_V[token]), top
