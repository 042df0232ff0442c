"""The combined objective: Binary RL + hindsight on-policy distillation under a PPO clipped surrogate.

Per response token t of sample i (DESIGN.md decision 8):

    A_it = w_rl * r_i * [i has a reward] + w_opd * (log pi_teacher(a_t | s + hint) - log pi_old(a_t | s)) * [i has a hint]
    ratio_it = exp(log pi_theta(a_t | s) - log pi_old(a_t | s))
    L_it = -min(ratio_it * A_it, clip(ratio_it, 1 - eps_low, 1 + eps_high) * A_it) + kl_coef * k3_it
    L = mean over samples i of (mean over the response tokens t of sample i of L_it)

Choices, all of them:
- Reward: prefer -> r = +1, avoid -> r = -1, broadcast to every response token (one sequence-level
  reward, no discount, no value function, no GAE). Optional baseline: subtract the mean reward of the
  samples of the batch that carry one (off by default: with small, mostly one-sided batches it would
  cancel the signal).
- OPD term: per-token log-ratio of the teacher (the frozen base model, adapter disabled, hint appended
  to the last user message) and pi_old on the student's own sampled tokens: the single-sample
  estimate of the negative reverse KL at that position, used as a dense advantage with discount 0
  (no sum over future tokens). It is computed once before the update and held constant.
- Both terms are constants w.r.t. theta (detached); only the ratio carries gradient.
- Clipping: asymmetric PPO clip, eps_low = 0.2 below, eps_high = 0.28 above ("clip-higher"), so
  low-probability tokens with positive advantage can still rise. The clip fraction counts tokens where
  the clipped branch is the active one (ratio beyond the bound in the direction of the advantage).
- Normalisation: token-mean within each sample, then a plain mean over samples, so a long response
  weighs as much as a short one; samples with no response token are left out of the mean.
- KL to base: optional, coefficient default 0, the k3 estimator exp(d) - d - 1 with
  d = log pi_base - log pi_theta per sampled token (non-negative, unbiased for KL(pi_theta || pi_base)
  on tokens sampled from pi_theta; our tokens come from pi_old, which we ignore as usual).
- Entropy is monitored (full-vocabulary entropy per token), never added to the loss. The KL to base
  and to parent that the collapse guard reads are exact full-vocabulary KL(pi_theta || ref) at every
  response position (``full_kl``), not sampled-token estimates: the responses are labeled turns that
  need not be samples of pi_old, and a sampled-token ratio explodes on them.
- Observation-only samples never reach this module: the data layer drops them before batching.
- Top-K variant (``topk`` > 0): for samples with a hint, the OPD advantage is replaced by the exact
  reverse KL(pi_theta || pi_teacher) over K+1 bins at every response position: the teacher's top-K
  tokens plus one tail bin holding the remaining mass of each distribution. Weighted by w_opd and
  token-mean per sample like the surrogate; the RL term is unchanged.
- Two imitation terms are added outside this module, in the training step (learner.train): the retain
  set (learner.retain: the base model's answers to explicit instructions, weight ``w_retain``) and the hint
  demonstrations (learner.demos: the hinted teacher's own answers to the contexts of a hinted
  conversation, learned without the hint, weight ``w_demo``), each a mean per-token NLL.
- Simplified: no importance correction for a sampling temperature other than 1 in the captured
  logprobs, no reference-policy reset, no per-token advantage whitening.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TAIL_EPS = 1e-6  # floor for the tail bin probability of the top-K variant


@dataclass(frozen=True)
class LossOutput:
    """The scalar to minimise and its detached parts."""

    loss: torch.Tensor  # () with grad
    pg_loss: torch.Tensor  # () clipped surrogate part
    kl_base: torch.Tensor  # () mean k3 KL to base (0 when no base logprobs were given)
    topk_kl: torch.Tensor  # () mean reverse KL of the top-K variant (0 when off)
    clip_fraction: torch.Tensor  # () share of response tokens on the clipped branch
    advantage_mean: torch.Tensor  # () mean token advantage
    ratio_mean: torch.Tensor  # () mean ratio pi_theta / pi_old


def rewards_with_baseline(reward_B: torch.Tensor, has_reward_B: torch.Tensor, baseline: bool) -> torch.Tensor:
    """Per-sample RL reward, zero where there is none; minus the batch mean of the rewarded ones if asked."""
    has = has_reward_B.to(reward_B.dtype)
    if baseline and bool(has.sum() > 0):
        mean = (reward_B * has).sum() / has.sum()
        return (reward_B - mean) * has
    return reward_B * has


def token_advantages(
    reward_B: torch.Tensor,
    has_reward_B: torch.Tensor,
    teacher_logp_B_T: torch.Tensor,
    old_logp_B_T: torch.Tensor,
    has_hint_B: torch.Tensor,
    *,
    w_rl: float,
    w_opd: float,
    baseline: bool = False,
) -> torch.Tensor:
    """A_t = w_rl * r + w_opd * (log pi_teacher - log pi_old); each term only where the sample has it."""
    r_B = rewards_with_baseline(reward_B, has_reward_B, baseline)
    opd_B_T = (teacher_logp_B_T - old_logp_B_T) * has_hint_B.to(old_logp_B_T.dtype)[:, None]
    return (w_rl * r_B[:, None] + w_opd * opd_B_T).detach()


def per_sample_token_mean(x_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> torch.Tensor:
    """Mean over each sample's masked tokens, then over the samples that have at least one token."""
    m = mask_B_T.to(x_B_T.dtype)
    count_B = m.sum(-1)
    present_B = count_B > 0
    if not bool(present_B.any()):
        return x_B_T.sum() * 0.0
    per_B = (x_B_T * m).sum(-1) / count_B.clamp(min=1)
    return per_B[present_B].mean()


def clipped_surrogate(
    logp_B_T: torch.Tensor,
    old_logp_B_T: torch.Tensor,
    adv_B_T: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(ratio*A, clip(ratio)*A), the clipped-branch indicator and the ratio."""
    ratio_B_T = torch.exp(logp_B_T - old_logp_B_T)
    unclipped = ratio_B_T * adv_B_T
    clipped = torch.clamp(ratio_B_T, 1.0 - eps_low, 1.0 + eps_high) * adv_B_T
    loss_B_T = -torch.minimum(unclipped, clipped)
    is_clipped_B_T = ((adv_B_T > 0) & (ratio_B_T > 1.0 + eps_high)) | ((adv_B_T < 0) & (ratio_B_T < 1.0 - eps_low))
    return loss_B_T, is_clipped_B_T, ratio_B_T


def k3_kl(logp_B_T: torch.Tensor, ref_logp_B_T: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref) from sampled-token logprobs: exp(d) - d - 1, d = ref - pi."""
    d = ref_logp_B_T - logp_B_T
    return torch.exp(d) - d - 1.0


def token_entropy(logits_B_T_V: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the full next-token distribution at every position."""
    logp = torch.log_softmax(logits_B_T_V.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def full_kl(p_logits_B_T_V: torch.Tensor, q_logits_B_T_V: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) over the whole vocabulary at every position (monitoring: drift to base / parent)."""
    p_logp = torch.log_softmax(p_logits_B_T_V.float(), dim=-1)
    q_logp = torch.log_softmax(q_logits_B_T_V.float(), dim=-1)
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


def topk_reverse_kl(
    student_logits_B_T_V: torch.Tensor,
    teacher_topk_logp_B_T_K: torch.Tensor,
    teacher_topk_idx_B_T_K: torch.Tensor,
) -> torch.Tensor:
    """Per-token reverse KL(student || teacher) over the teacher's top-K tokens plus one tail bin."""
    s_logp_V = torch.log_softmax(student_logits_B_T_V.float(), dim=-1)
    s_top_K = s_logp_V.gather(-1, teacher_topk_idx_B_T_K)
    t_top_K = teacher_topk_logp_B_T_K.float()
    s_tail = torch.log(torch.clamp(1.0 - s_top_K.exp().sum(-1, keepdim=True), min=TAIL_EPS))
    t_tail = torch.log(torch.clamp(1.0 - t_top_K.exp().sum(-1, keepdim=True), min=TAIL_EPS))
    s_bins = torch.cat([s_top_K, s_tail], dim=-1)
    t_bins = torch.cat([t_top_K, t_tail], dim=-1)
    return (s_bins.exp() * (s_bins - t_bins)).sum(-1)


def combined_loss(
    logp_B_T: torch.Tensor,
    old_logp_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    adv_B_T: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    kl_coef: float = 0.0,
    base_logp_B_T: torch.Tensor | None = None,
    topk_kl_B_T: torch.Tensor | None = None,
    topk_mask_B_T: torch.Tensor | None = None,
    w_opd: float = 1.0,
) -> LossOutput:
    """The objective of the module docstring; ``adv_B_T`` comes from ``token_advantages``."""
    mask = mask_B_T.bool()
    pg_B_T, clipped_B_T, ratio_B_T = clipped_surrogate(
        logp_B_T, old_logp_B_T, adv_B_T, eps_low=eps_low, eps_high=eps_high
    )
    total_B_T = pg_B_T
    zero = logp_B_T.sum() * 0.0
    kl_base = zero.detach()
    if base_logp_B_T is not None:
        kl_B_T = k3_kl(logp_B_T, base_logp_B_T)
        kl_base = per_sample_token_mean(kl_B_T.detach(), mask)
        if kl_coef:
            total_B_T = total_B_T + kl_coef * kl_B_T
    topk_kl = zero.detach()
    if topk_kl_B_T is not None:
        tmask = mask if topk_mask_B_T is None else (mask & topk_mask_B_T.bool())
        total_B_T = total_B_T + w_opd * topk_kl_B_T * tmask.to(topk_kl_B_T.dtype)
        topk_kl = per_sample_token_mean(topk_kl_B_T.detach(), tmask)
    m = mask.to(logp_B_T.dtype)
    n = m.sum().clamp(min=1)
    return LossOutput(
        loss=per_sample_token_mean(total_B_T, mask),
        pg_loss=per_sample_token_mean(pg_B_T.detach(), mask),
        kl_base=kl_base,
        topk_kl=topk_kl,
        clip_fraction=(clipped_B_T.to(m.dtype) * m).sum() / n,
        advantage_mean=(adv_B_T * m).sum() / n,
        ratio_mean=(ratio_B_T.detach() * m).sum() / n,
    )
