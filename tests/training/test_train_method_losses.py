"""IntroVAE's and LIA's losses against hand-computed values (the ALAE ones: test_train_losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from alae_rt.training.losses import (
    introvae_encoder_loss,
    introvae_generator_loss,
    kl_to_prior,
    lia_encoder_loss,
    sum_squared_error,
)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_kl_to_prior_by_hand():
    mean = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    logvar = torch.tensor([[0.0, 0.0], [math.log(2.0), 0.0]])
    # Sample 0 is the prior itself: 0. Sample 1: 0.5 * ((1 + 2 - 1 - ln 2) + (4 + 1 - 1 - 0)).
    expected = [0.0, 0.5 * ((1 + 2 - 1 - math.log(2.0)) + 4.0)]
    assert kl_to_prior(mean, logvar).tolist() == pytest.approx(expected, abs=1e-6)


def test_kl_to_prior_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(7), torch.ones(7))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(kl_to_prior(mean, logvar), expected, rtol=1e-5, atol=1e-5)


def test_sum_squared_error_by_hand():
    x = torch.zeros(2, 1, 2, 2)
    rec = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, -3.0]]).view(2, 1, 2, 2)
    # 0.5 * (1 + 4 + 9) / 2 images
    assert sum_squared_error(rec, x).item() == pytest.approx(3.5)


def test_introvae_encoder_loss_by_hand():
    kl_real = torch.tensor([2.0, 4.0])
    kl_rec = torch.tensor([1.0, 12.0])  # margin 10: hinges 9 and 0
    kl_fake = torch.tensor([10.0, 7.5])  # hinges 0 and 2.5
    rec = torch.tensor(6.0)
    expected = 3.0 + 0.25 * ((9.0 + 0.0) + (0.0 + 2.5)) / 2 + 0.5 * 6.0
    got = introvae_encoder_loss(kl_real, kl_rec, kl_fake, rec, alpha=0.25, beta=0.5, margin=10.0)
    assert got.item() == pytest.approx(expected)


def test_introvae_encoder_loss_ignores_kls_past_the_margin():
    kl_real, rec = torch.tensor([1.0]), torch.tensor(0.0)
    far = introvae_encoder_loss(kl_real, torch.tensor([50.0]), torch.tensor([80.0]), rec, 1.0, 1.0, margin=20.0)
    assert far.item() == pytest.approx(1.0)  # both past m: only KL(real) is left


def test_introvae_generator_loss_by_hand():
    kl_rec, kl_fake, rec = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 6.0]), torch.tensor(4.0)
    expected = 0.25 * ((1 + 2) + (3 + 6)) / 2 + 0.5 * 4.0
    assert introvae_generator_loss(kl_rec, kl_fake, rec, 0.25, 0.5).item() == pytest.approx(expected)


def test_lia_encoder_loss_by_hand():
    x = torch.zeros(2, 1, 1, 2)
    rec = torch.tensor([1.0, -1.0, 2.0, 0.0]).view(2, 1, 1, 2)  # mean of squares: 6 / 4
    feat_real = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    feat_rec = torch.tensor([[1.0, 3.0], [0.0, 1.0]])  # mean of squares: (0 + 4 + 0 + 1) / 4
    logits = torch.tensor([0.0, 2.0])
    expected = 1.5 + 0.5 * 1.25 + 0.1 * (softplus(0.0) + softplus(-2.0)) / 2
    got = lia_encoder_loss(rec, x, feat_rec, feat_real, logits, feature_weight=0.5, adversarial_weight=0.1)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_lia_encoder_loss_targets_carry_no_gradient():
    x = torch.rand(2, 1, 2, 2, requires_grad=True)
    feat_real = torch.rand(2, 3, requires_grad=True)
    rec, feat_rec = torch.rand(2, 1, 2, 2, requires_grad=True), torch.rand(2, 3, requires_grad=True)
    lia_encoder_loss(rec, x, feat_rec, feat_real, torch.zeros(2), 1.0, 1.0).backward()
    assert x.grad is None and feat_real.grad is None
    assert rec.grad is not None and feat_rec.grad is not None
