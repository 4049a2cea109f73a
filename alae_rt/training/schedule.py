"""Progressive growing: which LOD, blend factor, batch size and learning rate apply after a number of images."""

from __future__ import annotations

import math
from dataclasses import dataclass

from alae_rt.training.config import TrainConfig


@dataclass(frozen=True)
class Phase:
    lod: int  # resolution 4 * 2**lod
    blend: float  # 0 -> 1 while the LOD's new block fades in, then 1
    batch: int  # global batch size
    lr: float

    @property
    def resolution(self) -> int:
        return 4 * 2**self.lod


def phase_at(images_seen: int, cfg: TrainConfig, layer_count: int) -> Phase:
    """The training phase for the step that starts after `images_seen` images (the official LODDriver, in images).

    Blend follows the official sine ramp sin(pi * t - pi / 2) / 2 + 1/2 over the first half of each LOD > 0,
    so it starts at exactly 0 (the new block contributes nothing) and reaches 1 with zero slope.
    """
    lod = min(layer_count - 1, images_seen // cfg.lod_images)
    into = images_seen - lod * cfg.lod_images
    half = cfg.lod_images // 2
    blend = 1.0
    if lod > 0 and into < half:
        blend = math.sin(into / half * math.pi - 0.5 * math.pi) * 0.5 + 0.5
    return Phase(lod, blend, cfg.batch(lod), cfg.lr(lod))
