"""Per-token log-probabilities of a response given prompt ids, with or without the LoRA adapter.

Shared by the learner (pi_old, pi_theta, teacher and base logprobs) and the gate (likelihood of
replayed responses, drift). The teacher is the same model with its adapter disabled and the hint
appended to the last user message (``append_hint``): no second model in memory.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from learner.loss import token_entropy

HINT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class ResponseLogprobs:
    """Right-padded per-response-token values; position t of row b is response token t of sample b."""

    logp_B_T: torch.Tensor  # log pi(a_t | s, a_<t) of the given tokens
    mask_B_T: torch.Tensor  # bool, True on real response tokens
    entropy_B_T: torch.Tensor | None = None  # full-vocabulary entropy at each position (if asked)
    logits_B_T_V: torch.Tensor | None = None  # next-token logits at each response position (if asked)


def append_hint(messages: Sequence[dict[str, Any]], hint: str) -> list[dict[str, Any]]:
    """A copy of ``messages`` with ``hint`` appended to the last user message (or a new one if none)."""
    out = copy.deepcopy(list(messages))
    for message in reversed(out):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):  # content parts: add a text part
            message["content"] = [*content, {"type": "text", "text": hint}]
        else:
            message["content"] = f"{content or ''}{HINT_SEPARATOR}{hint}" if content else hint
        return out
    out.append({"role": "user", "content": hint})
    return out


@contextlib.contextmanager
def adapter_disabled(model: Any) -> Iterator[Any]:
    """Run ``model`` as its base: peft's ``disable_adapter()`` when it has adapters, else as is."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        yield model
        return
    with disable():
        yield model


@contextlib.contextmanager
def sampling(model: Any, *, base: bool) -> Iterator[Any]:
    """``model`` in eval mode for sampling (its mode restored after); with ``base``, as its base model."""
    was_training = model.training
    model.eval()
    try:
        with adapter_disabled(model) if base else contextlib.nullcontext(model):
            yield model
    finally:
        model.train(was_training)


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def pack(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + response`` rows and, per response token, the index of the logit predicting it.

    Returns input_ids_B_L, attention_mask_B_L, logit_index_B_T, response_mask_B_T. Every prompt must
    hold at least one token (the first response token is predicted from the prompt's last logit).
    """
    if len(prompts) != len(responses):
        raise ValueError("prompts and responses differ in length")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    L, T, B = max(lengths), max(1, max(len(r) for r in responses)), len(prompts)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention = torch.zeros((B, L), dtype=torch.long)
    index = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        row = list(p) + list(r)
        input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[b, : len(row)] = 1
        if r:
            index[b, : len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))
            mask[b, : len(r)] = True
    return input_ids, attention, index, mask


def batch_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    with_entropy: bool = False,
    keep_logits: bool = False,
    pad_id: int = 0,
) -> ResponseLogprobs:
    """Log-probabilities of each response token given its prompt, in one forward pass.

    Gradients flow when the caller has them enabled (training); wrap in ``torch.no_grad()`` and
    ``adapter_disabled`` for pi_old, teacher or base logprobs. Values are float32 whatever the
    model's dtype.
    """
    device = model_device(model)
    input_ids, attention, index, mask = pack(prompts, responses, pad_id)
    input_ids, attention, index = input_ids.to(device), attention.to(device), index.to(device)
    logits_B_L_V = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
    V = logits_B_L_V.shape[-1]
    logits_B_T_V = logits_B_L_V.gather(1, index[:, :, None].expand(-1, -1, V)).float()
    targets_B_T = input_ids.gather(1, (index + 1).clamp(max=input_ids.shape[1] - 1))
    logp_B_T = torch.log_softmax(logits_B_T_V, dim=-1).gather(-1, targets_B_T[:, :, None]).squeeze(-1)
    mask = mask.to(device)
    logp_B_T = logp_B_T * mask
    entropy = token_entropy(logits_B_T_V.detach()) * mask if with_entropy else None
    return ResponseLogprobs(logp_B_T, mask, entropy, logits_B_T_V if keep_logits else None)


def sequence_logprobs(model: Any, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> torch.Tensor:
    """Per-token log-probabilities (T,) of one response given its prompt, without gradient."""
    with torch.no_grad():
        out = batch_logprobs(model, [prompt_ids], [response_ids])
    return out.logp_B_T[0, : len(response_ids)].cpu()


def topk_logprobs(
    model: Any, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's top-``k`` log-probabilities and token ids at every response position (no gradient)."""
    with torch.no_grad():
        out = batch_logprobs(model, prompts, responses, keep_logits=True)
    assert out.logits_B_T_V is not None
    values, indices = torch.log_softmax(out.logits_B_T_V, dim=-1).topk(k, dim=-1)
    return values, indices
