"""The ALAE losses against hand-computed values, and R1 against a plain per-sample autograd computation."""

from __future__ import annotations

import math

import pytest
import torch

from alae_rt import ModelConfig, StyleALAE
from alae_rt.training.losses import discriminator_loss, generator_loss, latent_loss, r1_penalty


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_discriminator_loss_by_hand():
    real = torch.tensor([2.0, -1.0])
    fake = torch.tensor([0.5, -3.0])
    expected = ((softplus(0.5) + softplus(-2.0)) + (softplus(-3.0) + softplus(1.0))) / 2
    assert discriminator_loss(real, fake, r1_gamma=0.0).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_loss_with_r1_by_hand():
    # A linear "discriminator" D(x) = sum(a * x): its gradient is a for every sample, so R1 = sum(a^2).
    a = torch.tensor([0.5, -1.0, 2.0, 0.0]).view(1, 1, 2, 2)
    reals = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 1.0, 0.5]]).view(2, 1, 2, 2).requires_grad_(True)
    real_logits = (reals * a).sum(dim=[1, 2, 3])  # [4.5, 1.5]
    fake_logits = torch.tensor([0.25, -0.75])
    r1 = 0.25 + 1.0 + 4.0
    expected = ((softplus(0.25) + softplus(-4.5)) + (softplus(-0.75) + softplus(-1.5))) / 2 + 10.0 / 2 * r1
    assert discriminator_loss(real_logits, fake_logits, reals, r1_gamma=10.0).item() == pytest.approx(expected)


def test_generator_loss_by_hand():
    fake = torch.tensor([1.0, -2.0, 0.0])
    expected = (softplus(-1.0) + softplus(2.0) + softplus(0.0)) / 3
    assert generator_loss(fake).item() == pytest.approx(expected, rel=1e-6)


def test_latent_loss_by_hand_and_fixed_target():
    w = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    w_rec = torch.tensor([[1.5, 2.0], [1.0, 1.0]], requires_grad=True)
    loss = latent_loss(w_rec, w)
    assert loss.item() == pytest.approx((0.25 + 0.0 + 1.0 + 4.0) / 4)
    loss.backward()
    assert w.grad is None  # the target F(z) is not trained by step III
    assert torch.allclose(w_rec.grad, 2 * (w_rec - w).detach() / 4)


@pytest.mark.parametrize("lod,blend", [(2, 1.0), (1, 0.4)])
def test_r1_matches_plain_autograd(lod, blend):
    torch.manual_seed(0)
    model = StyleALAE(ModelConfig.preset("tiny")).double()
    r = 4 * 2**lod
    reals = torch.randn(3, 3, r, r, dtype=torch.float64, requires_grad=True)
    logits = model.head(model.encoder(reals, lod=lod, blend=blend))
    ours = r1_penalty(logits, reals)
    for i in range(3):  # one sample at a time, its own graph: no batching, no create_graph
        x = reals[i:i + 1].detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model.head(model.encoder(x, lod=lod, blend=blend)).sum(), x)
        assert ours[i].item() == pytest.approx(g.pow(2).sum().item(), rel=1e-9)
    # The penalty is differentiable in the weights (create_graph): it trains E and D.
    ours.sum().backward()
    assert model.encoder.blocks[-1].conv_1.grad.abs().sum() > 0
    assert model.head.layers[0].weight.grad.abs().sum() > 0
