"""Augmentation for small data: geometric and colour changes of the real images that keep faces faces, and
DiffAugment (Zhao et al., NeurIPS 2020) - the same random, differentiable changes applied to every image the
discriminator sees, real and generated, so that it cannot memorise a small training set.

Both draw from the trainer's latent generator, so a run is reproducible and resumes exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Real-image augmentation: the set of named parts and their strengths (uniform ranges around no change).
AUGMENTATIONS = ("shift", "scale", "color")
SHIFT = 0.04  # fraction of the image side, each axis: +-2.5 px at 64x64
SCALE = 0.06  # zoom factor in [1 - SCALE, 1 + SCALE]
BRIGHTNESS = 0.08  # added, in the [-1, 1] range
CONTRAST = 0.12  # factor in [1 - CONTRAST, 1 + CONTRAST] around the image mean
SATURATION = 0.15  # factor in [1 - SATURATION, 1 + SATURATION] around the grey value

# DiffAugment's policies, with the paper's strengths.
DIFF_AUGMENTATIONS = ("color", "translation", "cutout")
DIFF_TRANSLATION = 0.125  # at most 1/8 of the side, zero padding
DIFF_CUTOUT = 0.5  # a square of half the side set to zero


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=gen, device=gen.device).to(device) * (high - low) + low


def _saturate(x: Tensor, factor: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    grey = x.mean(dim=1, keepdim=True)
    return grey + (x - grey) * factor[:, None, None, None]


def augment_reals(x: Tensor, parts: tuple[str, ...], gen: torch.Generator) -> Tensor:
    """Random shifts and zooms (bilinear, edges reflected) and mild brightness / contrast / saturation changes of
    a batch x [N, C, r, r] in [-1, 1]; `parts` names which (a subset of AUGMENTATIONS). Not differentiable by
    design: it changes the data, not the losses."""
    if not parts:
        return x
    n, device = x.shape[0], x.device
    if "shift" in parts or "scale" in parts:
        zoom = _uniform(n, 1 - SCALE, 1 + SCALE, gen, device) if "scale" in parts else torch.ones(n, device=device)
        shift = (_uniform(2 * n, -SHIFT, SHIFT, gen, device).view(n, 2) * 2.0 if "shift" in parts
                 else torch.zeros(n, 2, device=device))  # grid units: the side is 2
        theta = torch.zeros(n, 2, 3, device=device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if "color" in parts:
        x = x + _uniform(n, -BRIGHTNESS, BRIGHTNESS, gen, device)[:, None, None, None]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + (x - mean) * _uniform(n, 1 - CONTRAST, 1 + CONTRAST, gen, device)[:, None, None, None]
        x = _saturate(x, _uniform(n, 1 - SATURATION, 1 + SATURATION, gen, device))
        x = x.clamp(-1.0, 1.0)
    return x


def diff_augment(x: Tensor, policies: tuple[str, ...], gen: torch.Generator) -> Tensor:
    """DiffAugment of a batch in [-1, 1]: differentiable in x, so generator gradients pass through it.

    color: brightness +-0.5, saturation x [0, 2], contrast x [0.5, 1.5] (the paper's ranges on [0, 1] images,
    doubled for [-1, 1]); translation: integer shifts up to 1/8 of the side with zero padding; cutout: one square
    of half the side zeroed, its centre anywhere in the image.
    """
    if not policies:
        return x
    n, _, h, w = x.shape
    device = x.device
    if "color" in policies:
        x = x + _uniform(n, -1.0, 1.0, gen, device)[:, None, None, None]
        x = _saturate(x, _uniform(n, 0.0, 2.0, gen, device))
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + (x - mean) * _uniform(n, 0.5, 1.5, gen, device)[:, None, None, None]
    if "translation" in policies:
        sh, sw = int(h * DIFF_TRANSLATION + 0.5), int(w * DIFF_TRANSLATION + 0.5)
        if sh or sw:
            ty = torch.randint(-sh, sh + 1, (n, 1, 1), generator=gen, device=gen.device).to(device)
            tx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=gen, device=gen.device).to(device)
            ys = torch.arange(h, device=device)[None, :, None] - ty  # source row of each output row
            xs = torch.arange(w, device=device)[None, None, :] - tx
            inside = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)).to(x.dtype)[:, None]  # [n, 1, h, w]
            idx = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).view(n, 1, h * w).expand(-1, x.shape[1], -1)
            x = torch.gather(x.flatten(2), 2, idx).view_as(x) * inside
    if "cutout" in policies:
        ch, cw = max(1, int(h * DIFF_CUTOUT + 0.5)), max(1, int(w * DIFF_CUTOUT + 0.5))
        cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=gen, device=gen.device).to(device)
        cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=gen, device=gen.device).to(device)
        ys = torch.arange(h, device=device)[None, :, None]
        xs = torch.arange(w, device=device)[None, None, :]
        cut = ((ys - cy).abs() * 2 < ch) & ((xs - cx).abs() * 2 < cw)
        x = x * (~cut).to(x.dtype)[:, None]
    return x
