"""The combined objective on small literal tensors, every value computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from learner.loss import (
    clipped_surrogate,
    combined_loss,
    full_kl,
    k3_kl,
    per_sample_token_mean,
    rewards_with_baseline,
    token_advantages,
    token_entropy,
    topk_reverse_kl,
)

LN = math.log


def t(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize(
    ("reward", "has", "baseline", "expected"),
    [
        ([1, -1, 0], [1, 1, 0], False, [1, -1, 0]),
        ([1, 1, -1], [1, 1, 1], True, [2 / 3, 2 / 3, -4 / 3]),  # mean 1/3
        ([1, 1, 5], [1, 1, 0], True, [0, 0, 0]),  # the un-rewarded sample is neither counted nor shifted
        ([1, 0], [1, 0], True, [0, 0]),
        ([0, 0], [0, 0], True, [0, 0]),
    ],
)
def test_rewards_with_baseline(reward: list[float], has: list[int], baseline: bool, expected: list[float]) -> None:
    out = rewards_with_baseline(t(reward), torch.tensor(has, dtype=torch.bool), baseline)
    assert out.tolist() == pytest.approx(expected)


def test_advantage_each_term_only_where_the_sample_has_it() -> None:
    reward = t([1.0, -1.0, 0.0, 1.0])
    has_reward = torch.tensor([True, True, False, True])
    has_hint = torch.tensor([False, True, True, False])
    teacher = t([[LN(0.5), LN(0.5)], [LN(0.8), LN(0.1)], [LN(0.9), LN(0.2)], [0.0, 0.0]])
    old = t([[LN(0.25), LN(0.25)], [LN(0.4), LN(0.2)], [LN(0.3), LN(0.4)], [LN(0.5), LN(0.5)]])
    adv = token_advantages(reward, has_reward, teacher, old, has_hint, w_rl=2.0, w_opd=0.5)
    expected = [
        [2.0, 2.0],  # reward only: w_rl * r, teacher ignored
        [-2.0 + 0.5 * LN(2.0), -2.0 + 0.5 * LN(0.5)],  # both terms
        [0.5 * LN(3.0), 0.5 * LN(0.5)],  # hint only
        [2.0, 2.0],
    ]
    assert adv.tolist() == [pytest.approx(row) for row in expected]
    assert not adv.requires_grad


def test_advantage_weights_switch_terms_off() -> None:
    reward, has_r, has_h = t([1.0]), torch.tensor([True]), torch.tensor([True])
    teacher, old = t([[LN(0.6)]]), t([[LN(0.3)]])
    assert token_advantages(reward, has_r, teacher, old, has_h, w_rl=1.0, w_opd=0.0).item() == pytest.approx(1.0)
    assert token_advantages(reward, has_r, teacher, old, has_h, w_rl=0.0, w_opd=1.0).item() == pytest.approx(LN(2.0))


@pytest.mark.parametrize(
    ("ratio", "adv", "loss", "clipped"),
    [
        (1.0, 1.0, -1.0, False),
        (1.1, 1.0, -1.1, False),
        (1.5, 1.0, -1.28, True),  # positive advantage: capped at 1 + eps_high
        (0.5, 1.0, -0.5, False),  # positive advantage, ratio low: unclipped branch is the min
        (0.5, -1.0, 0.8, True),  # negative advantage: capped at 1 - eps_low
        (0.9, -1.0, 0.9, False),
        (1.5, -1.0, 1.5, False),  # negative advantage, ratio high: never clipped (pessimistic bound)
        (1.5, 0.0, 0.0, False),
    ],
)
def test_clipped_surrogate_both_sides(ratio: float, adv: float, loss: float, clipped: bool) -> None:
    logp, old = t([[LN(ratio) + LN(0.2)]]), t([[LN(0.2)]])
    out, is_clipped, r = clipped_surrogate(logp, old, t([[adv]]), eps_low=0.2, eps_high=0.28)
    assert out.item() == pytest.approx(loss)
    assert bool(is_clipped.item()) is clipped
    assert r.item() == pytest.approx(ratio)


def test_clipped_branch_has_no_gradient() -> None:
    old = t([[0.0, 0.0]])
    logp = torch.tensor([[LN(1.5), LN(1.1)]], dtype=torch.float64, requires_grad=True)
    out, _, _ = clipped_surrogate(logp, old, t([[1.0, 1.0]]), eps_low=0.2, eps_high=0.28)
    out.sum().backward()
    assert logp.grad is not None
    assert logp.grad.tolist() == [pytest.approx([0.0, -1.1])]  # d(-ratio)/dlogp = -ratio


def test_token_mean_per_sample_then_mean_over_samples() -> None:
    x = t([[1.0, 3.0, 100.0], [4.0, 100.0, 100.0], [100.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    # sample 0: (1+3)/2 = 2, sample 1: 4, sample 2 has no token and is left out -> (2+4)/2
    assert per_sample_token_mean(x, mask).item() == pytest.approx(3.0)
    assert per_sample_token_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_k3_kl_values() -> None:
    logp, ref = t([[LN(0.5), LN(0.2)]]), t([[LN(0.25), LN(0.2)]])
    # d = ln(0.5) -> exp(d) - d - 1 = 0.5 + ln 2 - 1 ; identical -> 0
    assert k3_kl(logp, ref).tolist() == [pytest.approx([0.5 + LN(2.0) - 1.0, 0.0])]


def test_entropy_of_uniform_and_peaked() -> None:
    logits = t([[[0.0, 0.0, 0.0, 0.0], [0.0, -1e9, -1e9, -1e9]]])
    assert token_entropy(logits).tolist() == [pytest.approx([LN(4.0), 0.0])]


def test_topk_reverse_kl_with_tail_bin() -> None:
    # student over 4 tokens: [0.5, 0.25, 0.125, 0.125]; teacher top-2 = tokens 1 and 0 at 0.5 and 0.3
    student = t([[[LN(0.5), LN(0.25), LN(0.125), LN(0.125)]]])
    idx = torch.tensor([[[1, 0]]])
    teacher = t([[[LN(0.5), LN(0.3)]]])
    # bins: student [0.25, 0.5, tail 0.25], teacher [0.5, 0.3, tail 0.2]
    expected = 0.25 * LN(0.25 / 0.5) + 0.5 * LN(0.5 / 0.3) + 0.25 * LN(0.25 / 0.2)
    assert topk_reverse_kl(student, teacher, idx).item() == pytest.approx(expected)
    same = topk_reverse_kl(student, t([[[LN(0.25), LN(0.5)]]]), idx)
    assert same.item() == pytest.approx(0.0, abs=1e-9)


def test_combined_loss_hand_computed_with_masks_and_kl() -> None:
    old = t([[LN(0.5), LN(0.5), LN(0.5)], [LN(0.2), LN(0.2), LN(0.2)]])
    logp = torch.tensor(
        [[LN(0.5), LN(0.75), LN(0.9)], [LN(0.1), LN(0.3), LN(0.9)]], dtype=torch.float64, requires_grad=True
    )
    base = t([[LN(0.5), LN(0.5), 0.0], [LN(0.2), LN(0.2), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.bool)  # last token is padding
    adv = t([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    out = combined_loss(logp, old, mask, adv, kl_coef=0.1, base_logp_B_T=base)
    # sample 0 ratios 1.0, 1.5 (A>0, clipped to 1.28): pg = (-1 - 1.28)/2 = -1.14
    # sample 1 ratios 0.5 (A<0, clipped to 0.8), 1.5: pg = (0.8 + 1.5)/2 = 1.15
    pg = (-1.14 + 1.15) / 2
    k3 = {1.0: 0.0, 1.5: 1 / 1.5 + LN(1.5) - 1, 0.5: 2.0 - LN(2.0) - 1}
    kl = ((k3[1.0] + k3[1.5]) / 2 + (k3[0.5] + k3[1.5]) / 2) / 2
    assert out.pg_loss.item() == pytest.approx(pg)
    assert out.kl_base.item() == pytest.approx(kl)
    assert out.loss.item() == pytest.approx(pg + 0.1 * kl)
    assert out.clip_fraction.item() == pytest.approx(2 / 4)
    assert out.advantage_mean.item() == pytest.approx(0.0)
    assert out.ratio_mean.item() == pytest.approx((1.0 + 1.5 + 0.5 + 1.5) / 4)
    out.loss.backward()
    assert logp.grad is not None
    assert logp.grad[:, 2].tolist() == [0.0, 0.0]  # masked positions get no gradient


def test_combined_loss_topk_term_only_on_masked_hint_tokens() -> None:
    zeros = t([[0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    topk_kl = t([[0.2, 0.4], [0.6, 9.0]])
    hint = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    out = combined_loss(zeros, zeros, mask, zeros, topk_kl_B_T=topk_kl, topk_mask_B_T=hint, w_opd=0.5)
    # sample 0: 0.5 * (0.2 + 0.4)/2 = 0.15; sample 1: no hint -> 0; mean over samples = 0.075
    assert out.loss.item() == pytest.approx(0.075)
    assert out.topk_kl.item() == pytest.approx(0.3)


def test_full_kl_over_the_vocabulary() -> None:
    p = t([[[LN(0.5), LN(0.25), LN(0.25)]]])
    q = t([[[LN(0.25), LN(0.25), LN(0.5)]]])
    # 0.5 ln 2 + 0.25 ln 1 + 0.25 ln 0.5 = 0.25 ln 2
    assert full_kl(p, q).item() == pytest.approx(0.25 * LN(2.0))
    assert full_kl(p, p).item() == pytest.approx(0.0)
