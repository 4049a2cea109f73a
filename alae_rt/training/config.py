"""Training hyper-parameters: a frozen dataclass with named presets, kept apart from the model's ModelConfig."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from alae_rt.errors import ConfigError
from alae_rt.training.augment import AUGMENTATIONS, DIFF_AUGMENTATIONS

LEGACY_MAPPING_LRMUL = 0.01  # what runs saved without `mapping_lrmul` used


def check_method_weights(cfg: Any) -> None:
    """The IntroVAE and LIA loss weights of a config (TrainConfig or the MLP one): finite, >= 0, beta > 0."""
    for field in ("introvae_alpha", "introvae_margin", "lia_feature_weight", "lia_adversarial_weight"):
        if not (getattr(cfg, field) >= 0 and math.isfinite(getattr(cfg, field))):
            raise ConfigError(f"{field} must be a number >= 0, got {getattr(cfg, field)}")
    if not (cfg.introvae_beta > 0 and math.isfinite(cfg.introvae_beta)):
        raise ConfigError(f"introvae_beta must be a positive number, got {cfg.introvae_beta}")


@dataclass(frozen=True)
class TrainConfig:
    """ALAE training as published, with the official code's defaults; per-LOD lists repeat their last entry.

    LOD k trains at resolution 4 * 2**k. Each LOD lasts `lod_images` images: for k > 0 the first half fades
    the new block in (blend 0 -> 1 on a sine ramp), the second half trains it alone. The last LOD runs on
    until the step budget is spent.
    """

    lod_batch: tuple[int, ...] = (128, 128, 64, 32, 16, 16, 8, 8, 4)  # global batch per LOD (all ranks)
    lod_lr: tuple[float, ...] = (0.0015,)  # Adam learning rate per LOD
    lod_images: int = 600_000  # images shown per LOD (the official EPOCHS_PER_LOD x dataset size)
    r1_gamma: float = 10.0
    adam_betas: tuple[float, float] = (0.0, 0.99)
    adam_eps: float = 1e-8
    dlatent_avg_beta: float = 0.995
    style_mixing_prob: float = 0.9
    ema_half_life_images: float = 10_000.0  # the official EMA: beta = 0.5 ** (batch / 10k)
    flip: bool = True  # random horizontal flips of the real images
    mapping_lrmul: float = 0.1  # F's step multiplier (the official MappingF)
    ae_updates_mapping: bool = False  # step III also trains F through G's input (the official code), not only E, G
    pixel_recon: float = 0.0  # weight of ||G(E(x)) - x||^2 on reals in step III; 0 = the paper's ALAE
    augment: tuple[str, ...] = ()  # real-image augmentation: a subset of training.augment.AUGMENTATIONS
    diffaug: tuple[str, ...] = ()  # DiffAugment policies for D's inputs: a subset of DIFF_AUGMENTATIONS
    # IntroVAE (training.introvae): E's loss KL(real) + alpha * hinges at margin m + beta * L_AE, G's alpha * KLs +
    # beta * L_AE; L_AE is half the squared error summed over an image, the KLs are summed over z's D entries.
    # The defaults suit D = 64 at 64x64 (small-64): m about D nats, where E's KL of real faces settles.
    introvae_alpha: float = 0.25
    introvae_beta: float = 0.5
    introvae_margin: float = 64.0
    # LIA (training.lia): iterations of stage 1 (the GAN; set by `alae-rt train`), then E's stage-2 loss weights.
    lia_gan_steps: int = 0
    lia_feature_weight: float = 1.0
    lia_adversarial_weight: float = 0.1
    seed: int = 0
    name: str = "default"

    def __post_init__(self) -> None:
        if not self.lod_batch or any(not isinstance(b, int) or b < 1 for b in self.lod_batch):
            raise ConfigError(f"lod_batch must be positive integers, got {self.lod_batch!r}")
        if not self.lod_lr or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lod_lr):
            raise ConfigError(f"lod_lr must be positive numbers, got {self.lod_lr!r}")
        if self.lod_images < 2:
            raise ConfigError(f"lod_images must be >= 2, got {self.lod_images}")
        if not (0 <= self.adam_betas[0] < 1 and 0 <= self.adam_betas[1] < 1):
            raise ConfigError(f"adam_betas must lie in [0, 1), got {self.adam_betas!r}")
        for field, allowed in (("augment", AUGMENTATIONS), ("diffaug", DIFF_AUGMENTATIONS)):
            unknown = [p for p in getattr(self, field) if p not in allowed]
            if unknown:
                raise ConfigError(f"{field}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
        if not (self.mapping_lrmul > 0 and math.isfinite(self.mapping_lrmul)):
            raise ConfigError(f"mapping_lrmul must be a positive number, got {self.mapping_lrmul}")
        for field in ("r1_gamma", "ema_half_life_images", "pixel_recon"):
            if getattr(self, field) < 0:
                raise ConfigError(f"{field} must be >= 0, got {getattr(self, field)}")
        check_method_weights(self)
        if isinstance(self.lia_gan_steps, bool) or not isinstance(self.lia_gan_steps, int) or self.lia_gan_steps < 0:
            raise ConfigError(f"lia_gan_steps must be an integer >= 0, got {self.lia_gan_steps!r}")
        for field in ("dlatent_avg_beta", "style_mixing_prob"):
            if not 0 <= getattr(self, field) <= 1:
                raise ConfigError(f"{field} must lie in [0, 1], got {getattr(self, field)}")

    def batch(self, lod: int) -> int:
        return self.lod_batch[min(lod, len(self.lod_batch) - 1)]

    def lr(self, lod: int) -> float:
        return self.lod_lr[min(lod, len(self.lod_lr) - 1)]

    def ema_beta(self, batch: int) -> float:
        return 0.5 ** (batch / self.ema_half_life_images) if self.ema_half_life_images > 0 else 0.0

    @staticmethod
    def preset(name: str) -> TrainConfig:
        """The training preset of a model preset (`tiny`, ...); other names get the default one."""
        return TRAIN_PRESETS.get(name, TRAIN_PRESETS["default"])

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        # Runs saved before the field existed trained F with the ablation-only multiplier.
        data.setdefault("mapping_lrmul", LEGACY_MAPPING_LRMUL)
        for key in ("lod_batch", "lod_lr", "adam_betas", "augment", "diffaug"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


TRAIN_PRESETS: dict[str, TrainConfig] = {
    "default": TrainConfig(),
    # Smoke tests: a few hundred images per LOD, so a few steps cross every LOD switch.
    "tiny": TrainConfig(lod_batch=(8,), lod_images=64, ema_half_life_images=500.0, name="tiny"),
    "tiny-gray": TrainConfig(lod_batch=(8,), lod_images=64, ema_half_life_images=500.0, name="tiny-gray"),
}
