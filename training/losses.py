"""The ALAE losses: non-saturating logistic losses for D and G, the R1 penalty on reals, latent reconstruction,
and the optional pixel reconstruction of the small-data recipe."""

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
