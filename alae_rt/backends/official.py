"""The official ALAE code's way of running the network (its ops, order and precision): the benchmark baseline.

Line for line what the official `net.py` / `lreq.py` do at inference, on our weights: fp32, NCHW, separate
ops - the kernel transforms of the fused convolutions redone on every call, upscaling by reshape and
repeat, blur as a grouped convolution, InstanceNorm2d, `style_mod` with addcmul. Every speed-up is measured
against this, in the same run on the same machine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alae_rt.errors import InputError
from alae_rt.network import ENC_NORM_EPS, GEN_NORM_EPS, LRELU_SLOPE, StyleALAE, blur_weight


def _transform_kernel(w: Tensor) -> Tensor:
    # lreq.ConvTranspose2d / Conv2d with transform_kernel=True, evaluated in every forward as there.
    w = F.pad(w, (1, 1, 1, 1), mode="constant")
    return w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]


def _upscale2d(x: Tensor, factor: int = 2) -> Tensor:
    s = x.shape
    x = torch.reshape(x, [-1, s[1], s[2], 1, s[3], 1])
    x = x.repeat(1, 1, 1, factor, 1, factor)
    return torch.reshape(x, [-1, s[1], s[2] * factor, s[3] * factor])


def _style_mod(x: Tensor, style: Tensor) -> Tensor:
    style = style.view(style.shape[0], 2, x.shape[1], 1, 1)
    return torch.addcmul(style[:, 1], value=1.0, tensor1=x, tensor2=style[:, 0] + 1)


def _per_channel(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)  # the official [1, C, 1, 1] parameters


class OfficialOrderBackend:
    """Encode and decode exactly as the official implementation computes them."""

    name = "official"

    def __init__(self, model: StyleALAE, device: torch.device):
        if next(model.parameters()).dtype != torch.float32:
            raise InputError("backend 'official' runs in fp32 only, as the official code does")
        self.model = model
        # The official Blur modules hold their kernels as buffers, made once.
        self._blur = {c: blur_weight(c, device=device) for c in {*model.config.generator_channels,
                                                                   *(i for i, _ in model.config.encoder_channels)}}

    def _blur_conv(self, x: Tensor) -> Tensor:
        return F.conv2d(x, weight=self._blur[x.shape[1]], groups=x.shape[1], padding=1)

    def decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        gen = self.model.generator
        x = gen.const
        for i, blk in enumerate(gen.blocks):
            if blk.upsample:
                if blk.fused:
                    x = F.conv_transpose2d(x, _transform_kernel(blk.conv_1), stride=2, padding=1)
                else:
                    x = F.conv2d(_upscale2d(x), blk.conv_1, padding=1)
                x = self._blur_conv(x)
            for j, (nw, bias, style) in enumerate(((blk.noise_weight_1, blk.bias_1, blk.style_1),
                                                   (blk.noise_weight_2, blk.bias_2, blk.style_2))):
                if j == 1:
                    x = F.conv2d(x, blk.conv_2, padding=1)
                if noise[2 * i + j] is not None:
                    x = torch.addcmul(x, value=1.0, tensor1=_per_channel(nw), tensor2=noise[2 * i + j])
                x = x + _per_channel(bias)
                x = F.leaky_relu(x, LRELU_SLOPE)
                x = F.instance_norm(x, eps=GEN_NORM_EPS)
                x = _style_mod(x, F.linear(styles[:, 2 * i + j], style.weight, style.bias))
        rgb = gen.to_rgb[-1]
        return F.conv2d(x, rgb.weight, rgb.bias)

    def encode(self, x: Tensor) -> Tensor:
        enc = self.model.encoder
        styles = torch.zeros(x.shape[0], 1, enc.latent_size, device=x.device)
        rgb = enc.from_rgb[0]
        x = F.leaky_relu(F.conv2d(x, rgb.weight, rgb.bias), LRELU_SLOPE)
        x = F.leaky_relu(x, LRELU_SLOPE)
        for blk in enc.blocks:
            x = F.conv2d(x, blk.conv_1, padding=1) + _per_channel(blk.bias_1)
            x = F.leaky_relu(x, LRELU_SLOPE)
            m = torch.mean(x, dim=[2, 3], keepdim=True)
            std = torch.sqrt(torch.mean((x - m) ** 2, dim=[2, 3], keepdim=True))
            style_1 = torch.cat((m, std), dim=1)
            x = F.instance_norm(x, eps=ENC_NORM_EPS)
            if blk.fused:
                x = F.conv2d(self._blur_conv(x), _transform_kernel(blk.conv_2) * 0.25, stride=2, padding=1)
            else:
                x = F.avg_pool2d(F.conv2d(self._blur_conv(x), blk.conv_2, padding=1), 2, 2)
            x = x + _per_channel(blk.bias_2)
            x = F.leaky_relu(x, LRELU_SLOPE)
            m = torch.mean(x, dim=[2, 3], keepdim=True)
            std = torch.sqrt(torch.mean((x - m) ** 2, dim=[2, 3], keepdim=True))
            style_2 = torch.cat((m, std), dim=1)
            x = F.instance_norm(x, eps=ENC_NORM_EPS)
            w1 = F.linear(style_1.view(style_1.shape[0], style_1.shape[1]), blk.style_1.weight, blk.style_1.bias)
            w2 = F.linear(style_2.view(style_2.shape[0], style_2.shape[1]), blk.style_2.weight, blk.style_2.bias)
            styles[:, 0] += w1 + w2
        return styles[:, 0]
