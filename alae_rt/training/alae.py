"""The three ALAE updates of one iteration as a module (what DistributedDataParallel wraps), and the EMA.

A training method is such a module: `forward(phase, ...)` -> the loss of one phase, and `update(...)` -> one whole
iteration with its optimiser steps. IntroVAE (training.introvae) and LIA (training.lia) follow the same shape.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from alae_rt.network import StyleALAE
from alae_rt.training.augment import diff_augment
from alae_rt.training.config import TrainConfig
from alae_rt.training.losses import discriminator_loss, generator_loss, latent_loss, pixel_loss

PHASES = ("d", "g", "ae")
# What the trainer's four loss columns (loss_d, loss_g, loss_ae, loss_pix) hold for this method: the curves' labels.
ALAE_LOSS_LABELS = ("loss_d (E, D: logistic + R1)", "loss_g (F, G: non-saturating)",
                    "loss_ae (E, G: latent reconstruction)", "pixel reconstruction (weighted)")


class ALAESteps(nn.Module):
    """forward(phase, reals, lod, blend, gen) -> the loss of one ALAE step, on the current LOD:

    "d"  (I)   E and D: softplus(D(E(fake))) + softplus(-D(E(real))) + gamma / 2 * R1(real); fakes from F, G
               with style mixing, made without gradients.
    "g"  (II)  F and G: softplus(-D(E(G(F(z))))) with E and D held fixed.
    "ae" (III) E and G: ||w - E(G(w))||^2 with w = F(z) the fixed target and no style mixing. F gets no
               gradient from this step, as in the paper's algorithm, unless `ae_updates_mapping` (the official
               code: F trained through G's input). With `pixel_recon` > 0 also pixel_recon * ||G(E(x)) - x||^2 on
               the reals (not in the paper). Returns [latent term, pixel term]; the step trains on their sum.
    Every F(z) also moves `dlatent_avg` towards the batch mean of w (beta 0.995), averaged over ranks.
    With `diffaug` policies, every image E sees in steps I and II (real and fake) goes through DiffAugment.
    """

    loss_labels = ALAE_LOSS_LABELS

    def __init__(self, model: StyleALAE, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg

    def stage_at(self, step: int) -> int:
        """The training stage of the iteration after `step` ones (LIA has two; ALAE and IntroVAE one)."""
        return 0

    def init_latent_average(self, gen: torch.Generator) -> None:
        """Start the truncation average at the mean of F(z), as a fresh model's would settle to."""
        with torch.no_grad():
            w = self.model.mapping(torch.randn(1024, self.model.config.latent_size, generator=gen).to(
                self.model.dlatent_avg.device))
            self.model.dlatent_avg.copy_(w.mean(0).expand_as(self.model.dlatent_avg))

    def update(self, run: nn.Module, reals: Tensor, lod: int, blend: float, gen: torch.Generator,
               opt_enc: torch.optim.Optimizer, opt_dec: torch.optim.Optimizer, step: int) -> Tensor:
        """One ALAE iteration: steps I, II and III, each with its optimiser steps; `run` is this module or its DDP
        wrapper. Returns [loss_d, loss_g, loss_ae, loss_pix], detached."""
        opt_enc.zero_grad(set_to_none=True)
        loss_d = run("d", reals, lod, blend, gen)
        loss_d.backward()
        opt_enc.step()

        opt_dec.zero_grad(set_to_none=True)
        loss_g = run("g", reals, lod, blend, gen)
        loss_g.backward()
        opt_dec.step()

        opt_enc.zero_grad(set_to_none=True)
        opt_dec.zero_grad(set_to_none=True)
        loss_ae, loss_pix = run("ae", reals, lod, blend, gen)
        (loss_ae + loss_pix).backward()
        opt_enc.step()
        opt_dec.step()
        return torch.stack([loss_d.detach(), loss_g.detach(), loss_ae.detach(), loss_pix.detach()])

    def noise(self, n: int, lod: int, gen: torch.Generator) -> list[Tensor | None]:
        """Fresh noise for blocks 0..lod in the generator's order ([1 or n, 1, r, r]); None above the LOD."""
        cfg = self.model.config
        maps: list[Tensor | None] = []
        for i, r in enumerate(cfg.block_resolutions):
            for j in range(2):
                # Block 0's first map has batch 1: it is added to `const` before the batch axis exists.
                shape = (1 if i == 0 and j == 0 else n, 1, r, r)
                maps.append(torch.randn(shape, generator=gen, device=gen.device) if i <= lod else None)
        return maps

    def map_latents(self, n: int, gen: torch.Generator, track: bool = True) -> Tensor:
        w = self.model.mapping(torch.randn(n, self.model.config.latent_size, generator=gen, device=gen.device))
        if not track:
            return w
        with torch.no_grad():
            mean = w.detach().mean(0)  # [D]
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(mean)
                mean /= dist.get_world_size()
            avg = self.model.dlatent_avg
            avg.lerp_(mean.expand_as(avg), 1.0 - self.cfg.dlatent_avg_beta)
        return w

    def styles(self, n: int, lod: int, gen: torch.Generator, mixing: bool) -> tuple[Tensor, Tensor]:
        """(w [n, D], styles [n, 2L, D]): z -> F, broadcast; with probability p the style inputs from a random
        cut-off in [1, 2(lod+1)] on come from a second w (style mixing)."""
        s = self.model.config.num_styles
        w = self.map_latents(n, gen)
        styles = w[:, None].expand(-1, s, -1)
        if mixing and self.cfg.style_mixing_prob > 0:
            if torch.rand((), generator=gen, device=gen.device).item() < self.cfg.style_mixing_prob:
                w2 = self.map_latents(n, gen, track=False)  # as the official code: the average follows the first w
                cutoff = int(torch.randint(1, 2 * (lod + 1) + 1, (), generator=gen, device=gen.device).item())
                layer = torch.arange(s, device=w.device)[None, :, None]
                styles = torch.where(layer < cutoff, styles, w2[:, None].expand(-1, s, -1))
        return w, styles

    def generate(self, n: int, lod: int, blend: float, gen: torch.Generator, mixing: bool) -> tuple[Tensor, Tensor]:
        """(w [n, D], images [n, C, r, r]) at the LOD."""
        w, styles = self.styles(n, lod, gen, mixing)
        return w, self.model.generator(styles, self.noise(n, lod, gen), lod=lod, blend=blend)

    def logits(self, x: Tensor, lod: int, blend: float, gen: torch.Generator) -> Tensor:
        x = diff_augment(x, self.cfg.diffaug, gen)
        return self.model.head(self.model.encoder(x, lod=lod, blend=blend))

    def forward(self, phase: str, reals: Tensor, lod: int, blend: float, gen: torch.Generator) -> Tensor:
        n = reals.shape[0]
        # E and D are fixed in step II; their weights must not collect gradients there.
        self.model.encoder.requires_grad_(phase != "g")
        self.model.head.requires_grad_(phase != "g")
        if phase == "d":
            with torch.no_grad():
                _, fakes = self.generate(n, lod, blend, gen, mixing=True)
            reals = reals.detach().requires_grad_(True)
            logits = self.logits(torch.cat([reals, fakes]), lod, blend, gen)  # [2n]: reals, then fakes
            return discriminator_loss(logits[:n], logits[n:], reals, self.cfg.r1_gamma)
        if phase == "g":
            _, fakes = self.generate(n, lod, blend, gen, mixing=True)
            return generator_loss(self.logits(fakes, lod, blend, gen))
        if phase == "ae":
            with torch.set_grad_enabled(self.cfg.ae_updates_mapping):
                w, styles = self.styles(n, lod, gen, mixing=False)
            fakes = self.model.generator(styles, self.noise(n, lod, gen), lod=lod, blend=blend)
            latent = latent_loss(self.model.encoder(fakes, lod=lod, blend=blend), w)
            pixel = torch.zeros_like(latent)
            if self.cfg.pixel_recon > 0:
                w_real = self.model.encoder(reals, lod=lod, blend=blend)
                styles = w_real[:, None].expand(-1, self.model.config.num_styles, -1)
                rec = self.model.generator(styles, self.noise(n, lod, gen), lod=lod, blend=blend)
                pixel = pixel_loss(rec, reals) * self.cfg.pixel_recon
            return torch.stack([latent, pixel])
        raise ValueError(f"unknown ALAE phase {phase!r}; one of {PHASES}")


@torch.no_grad()
def ema_update(ema: StyleALAE, model: StyleALAE, beta: float) -> None:
    """ema = lerp(model, ema, beta) for every parameter; dlatent_avg (already a running mean) is copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - beta)
    ema.dlatent_avg.copy_(model.dlatent_avg)
