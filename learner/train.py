"""The training loop: LoRA on top of the parent version, the combined objective, metrics and the guard.

Read top to bottom: attach the adapter (the parent's, or a fresh one on the base model); compute the
fixed quantities of every item once (pi_old, teacher and base logprobs, all without gradient); then
for each batch take ``steps_per_batch`` optimiser steps against the same pi_old (each also pulling the
retain set towards the base model's answers, see learner.retain, and the student towards the hinted teacher's
answers in hinted conversations, see learner.demos); finally measure the
trained adapter on the same items (KL to base and to parent, entropy) and decide whether it may ship.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from learner.config import TrainConfig
from learner.data import TrainItem
from learner.demos import DemoItem
from learner.logprobs import adapter_disabled, batch_logprobs, topk_logprobs
from learner.loss import combined_loss, full_kl, token_advantages, topk_reverse_kl
from learner.retain import RetainItem

Progress = Callable[[int, dict[str, float]], None]  # (optimiser steps done, latest step metrics)


@dataclass
class Fixed:
    """Per-item tensors computed once before any update (1-D, on the model's device)."""

    old_logp: torch.Tensor  # pi_old of each response token
    base_logp: torch.Tensor  # base model (adapter disabled), un-hinted prompt
    teacher_logp: torch.Tensor | None  # base model with the hint; None without a hint
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None  # (T, K) logprobs and ids


@dataclass(frozen=True)
class TrainResult:
    metrics: dict[str, float]
    refused: str | None  # why the collapse guard refuses to publish; None = publishable
    pi_old_sources: dict[str, int] = field(default_factory=dict)  # captured | recomputed -> items
    token_methods: dict[str, int] = field(default_factory=dict)  # captured | retokenized -> items


def lora_target_modules(model: Any) -> list[str]:
    """LoRA targets from the architecture: the names of the decoder's linear layers, never the output head.

    ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`` on Llama and Qwen2; other architectures
    name theirs differently (``c_attn``, ``query_key_value``, ...), and get theirs.
    """
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear | Conv1D) and module is not head})


def attach_adapter(base: Any, config: TrainConfig, parent_dir: Path | None) -> Any:
    """The trainable model: the parent's LoRA adapter loaded on ``base``, or a fresh one."""
    if config.gradient_checkpointing and hasattr(base, "gradient_checkpointing_enable"):
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False
    if parent_dir is not None:
        return PeftModel.from_pretrained(base, str(parent_dir), is_trainable=True)
    torch.manual_seed(config.seed)  # LoRA A is randomly initialised: make a run reproducible
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules) or lora_target_modules(base), task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lora)


def _chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _pad(rows: Sequence[torch.Tensor], T: int) -> torch.Tensor:
    out = torch.zeros((len(rows), T), dtype=torch.float32, device=rows[0].device)
    for b, row in enumerate(rows):
        out[b, : row.shape[0]] = row[:T]
    return out


@torch.no_grad()
def compute_fixed(model: Any, items: Sequence[TrainItem], config: TrainConfig, pad_id: int) -> tuple[list[Fixed], Counter[str]]:
    """pi_old (captured when the parent served the turn, else recomputed), base and teacher logprobs."""
    model.eval()
    fixed: list[Fixed] = []
    sources: Counter[str] = Counter()
    for chunk in _chunks(items, config.micro_batch_size):
        prompts = [it.prompt_ids for it in chunk]
        responses = [it.response_ids for it in chunk]
        current = batch_logprobs(model, prompts, responses, pad_id=pad_id)
        with adapter_disabled(model):
            base = batch_logprobs(model, prompts, responses, pad_id=pad_id)
            hinted = [i for i, it in enumerate(chunk) if it.teacher_prompt_ids is not None]
            teacher: dict[int, torch.Tensor] = {}
            topk: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            if hinted:
                t_prompts = [chunk[i].teacher_prompt_ids or [] for i in hinted]
                t_responses = [chunk[i].response_ids for i in hinted]
                out = batch_logprobs(model, t_prompts, t_responses, pad_id=pad_id)
                teacher = {i: out.logp_B_T[j] for j, i in enumerate(hinted)}
                if config.topk > 0:
                    values, indices = topk_logprobs(model, t_prompts, t_responses, config.topk)
                    topk = {i: (values[j], indices[j]) for j, i in enumerate(hinted)}
        for b, it in enumerate(chunk):
            n = len(it.response_ids)
            if it.captured_logprobs is not None:
                old = torch.tensor(it.captured_logprobs[:n], dtype=torch.float32, device=current.logp_B_T.device)
                sources["captured"] += 1
            else:
                old = current.logp_B_T[b, :n].clone()
                sources["recomputed"] += 1
            t_logp = teacher[b][:n].clone() if b in teacher else None
            t_topk = (topk[b][0][:n].clone(), topk[b][1][:n].clone()) if b in topk else None
            fixed.append(Fixed(old, base.logp_B_T[b, :n].clone(), t_logp, t_topk))
    return fixed, sources


def _nll_term(model: Any, pairs: Sequence[RetainItem | DemoItem], weight: float, micro_batch_size: int, pad_id: int,
              sums: Counter[str], key: str) -> None:
    """Backpropagate ``weight`` times the mean per-token NLL of ``pairs`` (answers to imitate); add metrics."""
    if not pairs or weight <= 0:
        return
    for chunk in _chunks(pairs, micro_batch_size):
        out = batch_logprobs(model, [r.prompt_ids for r in chunk], [r.response_ids for r in chunk], pad_id=pad_id)
        mask = out.mask_B_T.to(out.logp_B_T.dtype)
        nll = -(out.logp_B_T * mask).sum() / mask.sum().clamp(min=1)
        share = len(chunk) / len(pairs)
        (weight * nll * share).backward()
        sums[key] += float(nll.detach()) * share
        sums["tokens"] += sum(len(r.prompt_ids) + len(r.response_ids) for r in chunk)


def train_step(
    model: Any, optimizer: torch.optim.Optimizer, batch: Sequence[tuple[TrainItem, Fixed]], config: TrainConfig, pad_id: int,
    retain: Sequence[RetainItem] = (), demos: Sequence[DemoItem] = (),
) -> dict[str, float]:
    """One optimiser step over ``batch``, the retain set and the hint demonstrations (micro-batches accumulate
    gradients); its metrics."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    sums: Counter[str] = Counter()
    for micro in _chunks(batch, config.micro_batch_size):
        items, fixed = [m[0] for m in micro], [m[1] for m in micro]
        out = batch_logprobs(model, [it.prompt_ids for it in items], [it.response_ids for it in items],
                             with_entropy=True, keep_logits=config.topk > 0, pad_id=pad_id)
        T, dev = out.logp_B_T.shape[1], out.logp_B_T.device
        old = _pad([f.old_logp for f in fixed], T)
        has_hint = torch.tensor([f.teacher_logp is not None and config.topk == 0 for f in fixed], device=dev)
        teacher = _pad([f.teacher_logp if f.teacher_logp is not None else f.old_logp for f in fixed], T)
        adv = token_advantages(
            torch.tensor([it.reward for it in items], device=dev), torch.tensor([it.has_reward for it in items], device=dev),
            teacher, old, has_hint, w_rl=config.w_rl, w_opd=config.w_opd, baseline=config.rl_baseline,
        )
        topk_kl = topk_mask = None
        if config.topk > 0 and out.logits_B_T_V is not None:
            topk_kl, topk_mask = _topk_terms(out.logits_B_T_V, fixed, T)
        loss = combined_loss(
            out.logp_B_T, old, out.mask_B_T, adv, eps_low=config.eps_low, eps_high=config.eps_high,
            kl_coef=config.kl_coef, base_logp_B_T=_pad([f.base_logp for f in fixed], T),
            topk_kl_B_T=topk_kl, topk_mask_B_T=topk_mask, w_opd=config.w_opd,
        )
        weight = len(micro) / len(batch)
        (loss.loss * weight).backward()
        assert out.entropy_B_T is not None
        ntok = out.mask_B_T.sum().clamp(min=1)
        sums["loss"] += float(loss.loss.detach()) * weight
        sums["pg_loss"] += float(loss.pg_loss) * weight
        sums["clip_fraction"] += float(loss.clip_fraction) * weight
        sums["entropy"] += float(out.entropy_B_T.sum() / ntok) * weight
        sums["kl_base"] += float(loss.kl_base) * weight
        sums["topk_kl"] += float(loss.topk_kl) * weight
        sums["tokens"] += sum(len(it.prompt_ids) + len(it.response_ids) for it in items)
    _nll_term(model, retain, config.w_retain, config.micro_batch_size, pad_id, sums, "retain_nll")
    _nll_term(model, demos, config.w_demo, config.micro_batch_size, pad_id, sums, "demo_nll")
    params = [p for p in model.parameters() if p.requires_grad]
    sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    optimizer.step()
    return dict(sums)


def _topk_terms(logits_B_T_V: torch.Tensor, fixed: Sequence[Fixed], T: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, dev = logits_B_T_V.shape[0], logits_B_T_V.device
    kl = torch.zeros((B, T), device=dev)
    mask = torch.zeros((B, T), dtype=torch.bool, device=dev)
    for b, f in enumerate(fixed):
        if f.teacher_topk is None:
            continue
        values, indices = f.teacher_topk
        n = values.shape[0]
        kl[b, :n] = topk_reverse_kl(logits_B_T_V[b : b + 1, :n], values[None], indices[None])[0]
        mask[b, :n] = True
    return kl, mask


@torch.no_grad()
def measure(
    model: Any, items: Sequence[TrainItem], fixed: Sequence[Fixed], config: TrainConfig, pad_id: int,
    parent_dir: Path | None = None,
) -> dict[str, float]:
    """Exact KL of the trained adapter to base and to parent, entropy and log-likelihood change, per token."""
    model.eval()
    totals: Counter[str] = Counter()
    per_class: dict[str, list[float]] = {"prefer": [], "avoid": []}
    if parent_dir is not None:  # the parent's adapter beside the trained one, for the KL to parent
        model.load_adapter(str(parent_dir), adapter_name="parent", is_trainable=False)
    try:
        for chunk in _chunks(list(zip(items, fixed, strict=True)), config.micro_batch_size):
            prompts, responses = [c[0].prompt_ids for c in chunk], [c[0].response_ids for c in chunk]
            out = batch_logprobs(model, prompts, responses, with_entropy=True, keep_logits=True, pad_id=pad_id)
            with adapter_disabled(model):
                base = batch_logprobs(model, prompts, responses, keep_logits=True, pad_id=pad_id)
            assert out.logits_B_T_V is not None and base.logits_B_T_V is not None and out.entropy_B_T is not None
            kl_base_B_T = full_kl(out.logits_B_T_V, base.logits_B_T_V) * out.mask_B_T
            kl_parent_B_T = kl_base_B_T
            if parent_dir is not None:
                model.set_adapter("parent")
                parent = batch_logprobs(model, prompts, responses, keep_logits=True, pad_id=pad_id)
                model.set_adapter("default")
                assert parent.logits_B_T_V is not None
                kl_parent_B_T = full_kl(out.logits_B_T_V, parent.logits_B_T_V) * out.mask_B_T
            totals["tokens"] += int(out.mask_B_T.sum())
            totals["kl_base"] += float(kl_base_B_T.sum())
            totals["kl_parent"] += float(kl_parent_B_T.sum())
            totals["entropy"] += float(out.entropy_B_T.sum())
            for b, (it, f) in enumerate(chunk):
                n = len(it.response_ids)
                if it.cls in per_class and n:
                    per_class[it.cls].append(float((out.logp_B_T[b, :n] - f.old_logp).mean()))
    finally:
        if parent_dir is not None:
            model.set_adapter("default")
            model.delete_adapter("parent")
    n = max(totals["tokens"], 1)
    metrics = {k: totals[k] / n for k in ("kl_parent", "kl_base", "entropy")}
    for cls, deltas in per_class.items():
        if deltas:
            metrics[f"logp_delta_{cls}"] = sum(deltas) / len(deltas)
    return metrics


def collapse_reason(metrics: dict[str, float], config: TrainConfig) -> str | None:
    """Why a trained adapter must not be published (None = it may). Pure: tested with literal tables."""
    for key in ("loss", "kl_base", "kl_parent", "entropy"):
        if key in metrics and not math.isfinite(metrics[key]):
            return f"{key} is not finite ({metrics[key]})"
    if metrics.get("entropy", math.inf) < config.min_entropy:
        return f"entropy {metrics['entropy']:.4f} below the bound {config.min_entropy}"
    if metrics.get("kl_base", 0.0) > config.max_kl_base:
        return f"KL to base {metrics['kl_base']:.4f} above the bound {config.max_kl_base}"
    if metrics.get("kl_parent", 0.0) > config.max_kl_parent:
        return f"KL to parent {metrics['kl_parent']:.4f} above the bound {config.max_kl_parent}"
    return None


def train(
    model: Any, items: Sequence[TrainItem], config: TrainConfig, *, pad_id: int = 0, progress: Progress | None = None,
    parent_dir: Path | None = None, retain: Sequence[RetainItem] = (), demos: Sequence[DemoItem] = (),
) -> TrainResult:
    """Train ``model`` (a peft model with a trainable adapter) on ``items`` (with ``retain`` and ``demos``); measure;
    guard."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    fixed, sources = compute_fixed(model, items, config, pad_id)
    pairs = list(zip(items, fixed, strict=True))
    random.Random(config.seed).shuffle(pairs)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    train_started = time.perf_counter()
    for batch in _chunks(pairs, config.batch_size):
        for _ in range(config.steps_per_batch):
            history.append(train_step(model, optimizer, batch, config, pad_id, retain, demos))
            if progress is not None:
                progress(len(history), history[-1])
            if not math.isfinite(history[-1]["loss"]):
                break
    train_seconds = time.perf_counter() - train_started
    metrics = measure(model, items, fixed, config, pad_id, parent_dir)
    rewarded = [it.reward for it in items if it.has_reward]
    tokens = sum(h["tokens"] for h in history)
    metrics.update(
        loss=sum(h["loss"] for h in history) / max(len(history), 1),
        final_loss=history[-1]["loss"] if history else 0.0,
        clip_fraction=sum(h["clip_fraction"] for h in history) / max(len(history), 1),
        retain_samples=float(len(retain)),
        retain_nll_first=history[0].get("retain_nll", 0.0) if history else 0.0,
        retain_nll_final=history[-1].get("retain_nll", 0.0) if history else 0.0,
        demo_samples=float(len(demos)),
        demo_nll_first=history[0].get("demo_nll", 0.0) if history else 0.0,
        demo_nll_final=history[-1].get("demo_nll", 0.0) if history else 0.0,
        reward_mean=sum(rewarded) / len(rewarded) if rewarded else 0.0,
        samples=float(len(items)),
        rl_samples=float(len(rewarded)),
        opd_samples=float(sum(it.teacher_prompt_ids is not None for it in items)),
        response_tokens=float(sum(len(it.response_ids) for it in items)),
        tokens=float(tokens),
        steps=float(len(history)),
        train_seconds=train_seconds,
        tokens_per_s=tokens / train_seconds if train_seconds > 0 else 0.0,
        wall_seconds=time.perf_counter() - started,
    )
    return TrainResult(metrics=metrics, refused=collapse_reason(metrics, config), pi_old_sources=dict(sources),
                       token_methods=dict(Counter(it.token_method for it in items)))
