"""The `eager` backend: the plain torch modules, the reference every other backend is checked against."""

from __future__ import annotations

import torch
from torch import Tensor

from alae_rt.network import StyleALAE


class EagerBackend:
    """Plain torch modules: the reference every other backend is checked against."""

    name = "eager"

    def __init__(self, model: StyleALAE, device: torch.device):
        self.model = model

    def encode(self, x: Tensor) -> Tensor:
        return self.model.encoder(x)

    def decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        return self.model.generator(styles, noise)
