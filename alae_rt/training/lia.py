"""LIA (Zhu et al., latently invertible autoencoder) on the StyleALAE blocks: its two training stages as one module."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alae_rt.errors import InputError
from alae_rt.network import StyleALAE
from alae_rt.training.alae import ALAESteps
from alae_rt.training.augment import diff_augment
from alae_rt.training.config import TrainConfig
from alae_rt.training.losses import discriminator_loss, generator_loss, lia_encoder_loss, pixel_loss

PHASES = ("d", "g", "d_rec", "e")
LIA_LOSS_LABELS = ("loss_d (D on images: logistic + R1; stage 2: reals vs reconstructions)",
                   "loss_g (flow, G; stage 2: E's adversarial term)",
                   "stage 2: discriminator-feature reconstruction", "stage 2: pixel reconstruction")


class LIASteps(ALAESteps):
    """forward(phase, reals, lod, blend, gen) -> the loss of one LIA update, on the current LOD.

    Stage 1 (steps < lia_gan_steps), a GAN whose mapping is the invertible flow y = phi(z):
    "d"     critic and head: softplus(D(G(phi(z)))) + softplus(-D(x)) + gamma / 2 * R1, D(x) = head(critic(x));
    "g"     flow and G: softplus(-D(G(phi(z)))), with style mixing, dlatent_avg tracking y's mean.
    Stage 2 (the trainer freezes G and the flow at the EMA weights and the LOD where stage 1 ended):
    "d_rec" critic and head on reals vs reconstructions G(E(x)) (logistic + R1);
    "e"     E: pixel + feature_weight * feature + adversarial_weight * softplus(-D(G(E(x)))) (lia_encoder_loss),
            the features being the critic's output vector; returns [loss, adversarial, feature, pixel].
    """

    loss_labels = LIA_LOSS_LABELS

    def __init__(self, model: StyleALAE, cfg: TrainConfig):
        super().__init__(model, cfg)
        if model.method != "lia":
            raise InputError(f"LIA training needs a LIA network, got a {model.method} one")
        if cfg.lia_gan_steps < 1:
            raise InputError("LIA needs lia_gan_steps >= 1 (--lia-gan-steps): the steps of its first stage, the GAN")

    def stage_at(self, step: int) -> int:
        return 0 if step < self.cfg.lia_gan_steps else 1

    def logits(self, x: Tensor, lod: int, blend: float, gen: torch.Generator) -> Tensor:
        x = diff_augment(x, self.cfg.diffaug, gen)
        return self.model.head(self.model.critic(x, lod=lod, blend=blend))

    def reconstruct(self, x: Tensor, lod: int, blend: float, gen: torch.Generator) -> Tensor:
        """G(E(x)): y = E(x) at every style input."""
        y = self.model.encoder(x, lod=lod, blend=blend)  # [n, D]
        styles = y[:, None].expand(-1, self.model.config.num_styles, -1)
        return self.model.generator(styles, self.noise(x.shape[0], lod, gen), lod=lod, blend=blend)

    def _train_only(self, *trained: nn.Module) -> None:
        m = self.model
        for module in (m.mapping, m.generator, m.encoder, m.critic, m.head):
            module.requires_grad_(any(module is t for t in trained))

    def forward(self, phase: str, reals: Tensor, lod: int, blend: float, gen: torch.Generator) -> Tensor:
        m, cfg = self.model, self.cfg
        n = reals.shape[0]
        if phase == "d":
            self._train_only(m.critic, m.head)
            with torch.no_grad():
                _, fakes = self.generate(n, lod, blend, gen, mixing=True)
            reals = reals.detach().requires_grad_(True)
            logits = self.logits(torch.cat([reals, fakes]), lod, blend, gen)  # [2n]: reals, then fakes
            return discriminator_loss(logits[:n], logits[n:], reals, cfg.r1_gamma)
        if phase == "g":
            self._train_only(m.mapping, m.generator)
            _, fakes = self.generate(n, lod, blend, gen, mixing=True)
            return generator_loss(self.logits(fakes, lod, blend, gen))
        if phase == "d_rec":
            self._train_only(m.critic, m.head)
            with torch.no_grad():
                rec = self.reconstruct(reals, lod, blend, gen)
            reals = reals.detach().requires_grad_(True)
            logits = self.logits(torch.cat([reals, rec]), lod, blend, gen)
            return discriminator_loss(logits[:n], logits[n:], reals, cfg.r1_gamma)
        if phase == "e":
            self._train_only(m.encoder)
            rec = self.reconstruct(reals, lod, blend, gen)
            feats = m.critic(torch.cat([rec, reals]), lod=lod, blend=blend)  # [2n, D]: reconstructions, then reals
            logits = m.head(feats[:n])
            loss = lia_encoder_loss(rec, reals, feats[:n], feats[n:], logits, cfg.lia_feature_weight,
                                    cfg.lia_adversarial_weight)
            with torch.no_grad():
                parts = [generator_loss(logits), torch.mean((feats[:n] - feats[n:]) ** 2), pixel_loss(rec, reals)]
            return torch.stack([loss, *parts])
        raise ValueError(f"unknown LIA phase {phase!r}; one of {PHASES}")

    def update(self, run: nn.Module, reals: Tensor, lod: int, blend: float, gen: torch.Generator,
               opt_enc: torch.optim.Optimizer, opt_dec: torch.optim.Optimizer, step: int) -> Tensor:
        """One LIA iteration of the stage `step` is in. Returns [loss_d, loss_g or E's adversarial term, feature
        term, pixel term], detached (zeros for what the stage does not have)."""
        opt_enc.zero_grad(set_to_none=True)
        loss_d = run("d" if self.stage_at(step) == 0 else "d_rec", reals, lod, blend, gen)
        loss_d.backward()
        opt_enc.step()  # critic and head (E has no gradient here)
        if self.stage_at(step) == 0:
            opt_dec.zero_grad(set_to_none=True)
            loss_g = run("g", reals, lod, blend, gen)
            loss_g.backward()
            opt_dec.step()
            zero = torch.zeros_like(loss_d)
            return torch.stack([loss_d, loss_g, zero, zero]).detach()
        opt_enc.zero_grad(set_to_none=True)
        out = run("e", reals, lod, blend, gen)
        out[0].backward()
        opt_enc.step()  # E alone: critic and head have no gradient here
        return torch.stack([loss_d, out[1], out[2], out[3]]).detach()
