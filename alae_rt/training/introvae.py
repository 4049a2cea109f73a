"""IntroVAE (Huang et al., NeurIPS 2018) on the StyleALAE blocks: the two introspective updates of one iteration."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alae_rt.errors import InputError
from alae_rt.network import StyleALAE
from alae_rt.training.alae import ALAESteps
from alae_rt.training.config import TrainConfig
from alae_rt.training.losses import (
    introvae_encoder_loss,
    introvae_generator_loss,
    kl_to_prior,
    sum_squared_error,
)

PHASES = ("e", "g")
INTROVAE_LOSS_LABELS = ("loss_E (KL(real) + alpha * margin hinges + beta * L_AE)",
                        "loss_G (alpha * KL of G's images + beta * L_AE)",
                        "KL(real) per image (E's posterior vs the prior)",
                        "L_AE (0.5 * squared error per image)")


class IntroVAESteps(ALAESteps):
    """forward(phase, reals, lod, blend, gen) -> the losses of one IntroVAE update, on the current LOD:

    "e" E: (mean, logvar) = E(x), z_r = mean + exp(logvar / 2) * eps, x_r = G(z_r), x_p = G(z_p) with z_p ~ N(0, I);
        KL(E(x)) + alpha * ([m - KL(E(x_r))]^+ + [m - KL(E(x_p))]^+) + beta * L_AE(x_r, x), with x_r and x_p
        passed to E without gradients to G (E is the adversary: it pushes the KLs of G's images above m).
    "g" G: alpha * (KL(E(x_r)) + KL(E(x_p))) + beta * L_AE(x_r, x) with E fixed: G pulls its images' KLs down.
    G takes z at every style input (no mapping network); `dlatent_avg` stays the prior's mean, 0. Returns
    [loss, KL(real), L_AE]; the update trains on the first.
    """

    loss_labels = INTROVAE_LOSS_LABELS

    def __init__(self, model: StyleALAE, cfg: TrainConfig):
        super().__init__(model, cfg)
        if model.method != "introvae":
            raise InputError(f"IntroVAE training needs an IntroVAE network, got a {model.method} one")

    def init_latent_average(self, gen: torch.Generator) -> None:
        self.model.dlatent_avg.zero_()  # z's average: the prior's mean

    def decode(self, z: Tensor, lod: int, blend: float, gen: torch.Generator) -> Tensor:
        """G(z) [n, C, r, r]: z [n, D] at every style input."""
        styles = z[:, None].expand(-1, self.model.config.num_styles, -1)  # [n, 2L, D]
        return self.model.generator(styles, self.noise(z.shape[0], lod, gen), lod=lod, blend=blend)

    def prior(self, n: int, gen: torch.Generator) -> Tensor:
        return torch.randn(n, self.model.config.latent_size, generator=gen, device=gen.device)

    def sample_posterior(self, mean: Tensor, logvar: Tensor, gen: torch.Generator) -> Tensor:
        eps = torch.randn(mean.shape, generator=gen, device=gen.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def forward(self, phase: str, reals: Tensor, lod: int, blend: float, gen: torch.Generator) -> Tensor:
        cfg, enc = self.cfg, self.model.encoder
        n = reals.shape[0]
        self.model.encoder.requires_grad_(phase == "e")
        self.model.generator.requires_grad_(phase == "g")
        if phase not in PHASES:
            raise ValueError(f"unknown IntroVAE phase {phase!r}; one of {PHASES}")
        with torch.set_grad_enabled(phase == "e"):
            mean, logvar = enc.posterior(reals, lod, blend)  # each [n, D]
            z_rec = self.sample_posterior(mean, logvar, gen)
        rec = self.decode(z_rec, lod, blend, gen)
        with torch.set_grad_enabled(phase == "g"):
            fake = self.decode(self.prior(n, gen), lod, blend, gen)
        ae = sum_squared_error(rec, reals)
        if phase == "e":
            kl_rec = kl_to_prior(*enc.posterior(rec.detach(), lod, blend))
            kl_fake = kl_to_prior(*enc.posterior(fake, lod, blend))
            kl_real = kl_to_prior(mean, logvar)
            loss = introvae_encoder_loss(kl_real, kl_rec, kl_fake, ae, cfg.introvae_alpha, cfg.introvae_beta,
                                         cfg.introvae_margin)
            return torch.stack([loss, kl_real.mean(), ae])
        kl_rec = kl_to_prior(*enc.posterior(rec, lod, blend))
        kl_fake = kl_to_prior(*enc.posterior(fake, lod, blend))
        loss = introvae_generator_loss(kl_rec, kl_fake, ae, cfg.introvae_alpha, cfg.introvae_beta)
        return torch.stack([loss, kl_to_prior(mean, logvar).mean(), ae])

    def update(self, run: nn.Module, reals: Tensor, lod: int, blend: float, gen: torch.Generator,
               opt_enc: torch.optim.Optimizer, opt_dec: torch.optim.Optimizer, step: int) -> Tensor:
        """One IntroVAE iteration: E's update, then G's. Returns [loss_E, loss_G, KL(real), L_AE], detached."""
        opt_enc.zero_grad(set_to_none=True)
        out_e = run("e", reals, lod, blend, gen)
        out_e[0].backward()
        opt_enc.step()

        opt_dec.zero_grad(set_to_none=True)
        out_g = run("g", reals, lod, blend, gen)
        out_g[0].backward()
        opt_dec.step()
        return torch.stack([out_e[0], out_g[0], out_e[1], out_e[2]]).detach()
