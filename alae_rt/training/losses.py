"""The losses: ALAE's (non-saturating logistic losses for D and G, the R1 penalty on reals, latent reconstruction,
the optional pixel reconstruction of the small-data recipe), IntroVAE's and the second stage of LIA's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def r1_penalty(real_logits: Tensor, reals: Tensor) -> Tensor:
    """Per-sample ||d D(E(x)) / d x||^2 [N]; differentiable (create_graph) so the penalty trains E and D.

    reals must require grad and be the tensor the logits were computed from.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), reals, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, reals: Tensor | None = None,
                       r1_gamma: float = 10.0) -> Tensor:
    """mean(softplus(D(fake)) + softplus(-D(real)) + gamma / 2 * R1): step I, for E and D."""
    loss = F.softplus(fake_logits) + F.softplus(-real_logits)
    if r1_gamma != 0.0:
        loss = loss + r1_penalty(real_logits, reals) * (0.5 * r1_gamma)
    return loss.mean()


def generator_loss(fake_logits: Tensor) -> Tensor:
    """mean(softplus(-D(fake))): step II, for F and G (non-saturating)."""
    return F.softplus(-fake_logits).mean()


def latent_loss(w_rec: Tensor, w: Tensor) -> Tensor:
    """mean((E(G(w)) - w)^2) over batch and latent dimensions: step III, for E and G; w is the fixed target."""
    return torch.mean((w_rec - w.detach()) ** 2)


def pixel_loss(rec: Tensor, x: Tensor) -> Tensor:
    """mean((G(E(x)) - x)^2) over batch, channels and pixels (images in [-1, 1]); x is the fixed target."""
    return torch.mean((rec - x.detach()) ** 2)


# ---- IntroVAE (Huang et al., NeurIPS 2018, Eq. 11-12) ------------------------------------------------------------
def kl_to_prior(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample [N]: 0.5 * sum_d(mean^2 + exp(logvar) - 1 - logvar), the
    paper's L_REG. mean, logvar [N, D]."""
    return 0.5 * torch.sum(mean.pow(2) + logvar.exp() - 1.0 - logvar, dim=1)


def sum_squared_error(rec: Tensor, x: Tensor) -> Tensor:
    """The paper's L_AE: 0.5 * sum over channels and pixels of (rec - x)^2, averaged over the batch; x is the fixed
    target."""
    return 0.5 * torch.sum((rec - x.detach()) ** 2) / x.shape[0]


def introvae_encoder_loss(kl_real: Tensor, kl_rec: Tensor, kl_fake: Tensor, rec: Tensor, alpha: float,
                          beta: float, margin: float) -> Tensor:
    """E's loss: mean(KL(real)) + alpha * mean([m - KL(rec)]^+ + [m - KL(fake)]^+) + beta * L_AE. The KLs are
    per sample [N] (those of reconstructions and samples from images made without gradients to G)."""
    hinge = F.relu(margin - kl_rec) + F.relu(margin - kl_fake)
    return kl_real.mean() + alpha * hinge.mean() + beta * rec


def introvae_generator_loss(kl_rec: Tensor, kl_fake: Tensor, rec: Tensor, alpha: float, beta: float) -> Tensor:
    """G's loss: alpha * mean(KL(rec) + KL(fake)) + beta * L_AE, the KLs through E (fixed) of G's images."""
    return alpha * (kl_rec + kl_fake).mean() + beta * rec


# ---- LIA (Zhu et al.), second stage ------------------------------------------------------------------------------
def lia_encoder_loss(rec: Tensor, x: Tensor, feat_rec: Tensor, feat_real: Tensor, fake_logits: Tensor,
                     feature_weight: float, adversarial_weight: float) -> Tensor:
    """E's loss with G and the flow frozen: mean((G(E(x)) - x)^2) + feature_weight * mean((f(G(E(x))) - f(x))^2)
    + adversarial_weight * mean(softplus(-D(G(E(x))))); f is the image discriminator's feature vector, x and f(x)
    the fixed targets."""
    return (pixel_loss(rec, x) + feature_weight * torch.mean((feat_rec - feat_real.detach()) ** 2)
            + adversarial_weight * generator_loss(fake_logits))
