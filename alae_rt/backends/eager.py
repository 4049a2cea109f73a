"""The `eager` backend: the plain torch modules, the reference every other backend is checked against."""

from __future__ import annotations

import torch
from torch import Tensor

from alae_rt.network import StyleALAE


def to_channels_last(model: StyleALAE) -> None:
    """The encoder's and generator's 4-D weights in channels-last order, in place (values unchanged).

    On the CPU oneDNN runs channels-last (NHWC) convolutions several times faster than NCHW ones for the few-channel,
    high-resolution layers of a 1024x1024 model (one run, 2 threads, ffhq-1024's first encoder layers: the 3->16 1x1
    from_rgb 4.1x, the 16-channel blur 2.7x, the 16->16 3x3 conv 2.1x; benchmarks/cpu_peers.py has the whole model).
    """
    for part in (model.encoder, model.generator):
        part.to(memory_format=torch.channels_last)


def channels_last_input(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class EagerBackend:
    """Plain torch modules: the reference every other backend is checked against.

    Option `channels_last` (default off: the reference keeps torch's default layout) runs both networks in
    channels-last memory order (`to_channels_last`); results stay within fp32 rounding of the default (~1e-5)
    and come back in the default layout.
    """

    name = "eager"

    def __init__(self, model: StyleALAE, device: torch.device, channels_last: bool = False):
        self.model, self.channels_last = model, channels_last
        if channels_last:
            to_channels_last(model)

    def encode(self, x: Tensor) -> Tensor:
        return self.model.encoder(channels_last_input(x) if self.channels_last else x)

    def decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        images = self.model.generator(styles, noise)
        return images.contiguous() if self.channels_last else images
