"""The StyleALAE network (mapping F, generator G, encoder E, discriminator head D), numerically as the official code.

Every stored weight is the *effective* weight (learning-rate equalisation lives in the optimiser), so the
forward passes are plain `F.linear` / `F.conv2d` on the stored tensors.
"""

from __future__ import annotations

import math
from itertools import islice

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alae_rt.config import ModelConfig

# Shared with the kernels' torch references and defined there, once (kernels are leaf ops: they cannot import
# this module); blur_weight is re-exported for the checkpoint reader and the official-order backend.
from alae_rt.kernels.common import ENC_NORM_EPS, GEN_NORM_EPS, LRELU_SLOPE, blur
from alae_rt.kernels.common import blur_weight as blur_weight

PIXEL_NORM_EPS = 1e-8
HEAD_LAYERS = 3  # the discriminator head (official MappingToLatent) always has three layers


def corner_sum_kernel(weight: Tensor) -> Tensor:
    """The 4x4 kernel of the fused up/down-sampling convs: the 3x3 weight padded to 5x5, its 4 corner shifts summed."""
    w = F.pad(weight, (1, 1, 1, 1))
    return w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]


def _blur_buffer(channels: int) -> Tensor:
    """The fixed blur weight a block holds as a buffer, [channels, 1, 3, 3].

    Made once, not at every forward: at batch 1 on a GPU, where launches bound the time, making it per call cost
    each blur six tiny kernels. Made on the CPU even when the network is built on the meta device to take loaded
    weights (Runtime.from_checkpoint): it is not in the state dict, so nothing would replace a meta tensor; `.to()`
    moves it, and casts it exactly, with the weights."""
    return blur_weight(channels, device="cpu")


def pixel_norm(z: Tensor) -> Tensor:
    return z * torch.rsqrt(torch.mean(z.pow(2.0), dim=1, keepdim=True) + PIXEL_NORM_EPS)


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and biased std over HxW (no eps), each [N, C]."""
    m = torch.mean(x, dim=[2, 3], keepdim=True)
    std = torch.sqrt(torch.mean((x - m) ** 2, dim=[2, 3], keepdim=True))
    return m.flatten(1), std.flatten(1)


def generator_epilogue(x: Tensor, noise: Tensor | None, noise_weight: Tensor, bias: Tensor, style: Tensor) -> Tensor:
    """x + noise_weight*noise + bias, leaky_relu, instance norm (eps 1e-8), AdaIN x*(1+gamma)+beta.

    x [N or 1, C, H, W]; noise [N or 1, 1, H, W] or None; noise_weight, bias [C]; style [N, 2C] (gamma, beta).
    """
    c = x.shape[1]
    if noise is not None:
        x = torch.addcmul(x, noise_weight.view(1, c, 1, 1), noise)
    x = x + bias.view(1, c, 1, 1)
    x = F.leaky_relu(x, LRELU_SLOPE)
    x = F.instance_norm(x, eps=GEN_NORM_EPS)
    style = style.view(style.shape[0], 2, c, 1, 1)
    return torch.addcmul(style[:, 1], x, style[:, 0] + 1)


def encoder_epilogue(x: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """+ bias, leaky_relu, style statistics cat(mean, std) [N, 2C], instance norm (eps 1e-5)."""
    x = F.leaky_relu(x + bias.view(1, -1, 1, 1), LRELU_SLOPE)
    m, std = channel_stats(x)
    return F.instance_norm(x, eps=ENC_NORM_EPS), torch.cat((m, std), dim=1)


def _init_linear(layer: nn.Linear | nn.Conv2d, gain: float) -> None:
    # He init of the effective weight, as the official code's implicit learning-rate equalisation stores it.
    fan_in = layer.weight[0].numel()
    nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(fan_in))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class MappingF(nn.Module):
    """F: z [N, D] -> w [N, D]; pixel norm then M x (Linear, leaky_relu)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.latent_size
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(cfg.mapping_layers))
        for layer in self.layers:
            _init_linear(layer, math.sqrt(2.0))

    def forward(self, z: Tensor) -> Tensor:
        x = pixel_norm(z)
        for layer in self.layers:
            x = F.leaky_relu(layer(x), LRELU_SLOPE)
        return x


class DiscriminatorHead(nn.Module):
    """D: w [N, D] -> real/fake logit [N]; three Linear layers with no activation, logit = output index D."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.latent_size
        dims = [d] * HEAD_LAYERS + [2 * d]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        for layer in self.layers:
            _init_linear(layer, math.sqrt(2.0))

    def forward(self, w: Tensor) -> Tensor:
        x = w
        for layer in self.layers:
            x = layer(x)
        return x[:, w.shape[1]]


class GeneratorBlock(nn.Module):
    """One generator block: [upsample + conv_1 + blur], then twice (noise, bias, lrelu, IN, AdaIN), conv_2 between."""

    def __init__(self, in_ch: int, out_ch: int, latent_size: int, upsample: bool, fused: bool):
        super().__init__()
        self.upsample, self.fused = upsample, fused
        if upsample:
            # Fused: transposed-conv layout [in, out, 3, 3]; otherwise a plain conv [out, in, 3, 3].
            shape = (in_ch, out_ch, 3, 3) if fused else (out_ch, in_ch, 3, 3)
            self.conv_1 = nn.Parameter(torch.randn(shape) * math.sqrt(2.0 / (in_ch * 9)))
            self.register_buffer("blur_kernel", _blur_buffer(out_ch), persistent=False)
        self.noise_weight_1 = nn.Parameter(torch.zeros(out_ch))
        self.bias_1 = nn.Parameter(torch.zeros(out_ch))
        self.style_1 = nn.Linear(latent_size, 2 * out_ch)
        self.conv_2 = nn.Parameter(torch.randn(out_ch, out_ch, 3, 3) * math.sqrt(2.0 / (out_ch * 9)))
        self.noise_weight_2 = nn.Parameter(torch.zeros(out_ch))
        self.bias_2 = nn.Parameter(torch.zeros(out_ch))
        self.style_2 = nn.Linear(latent_size, 2 * out_ch)
        for style in (self.style_1, self.style_2):
            _init_linear(style, 1.0)

    def forward(self, x: Tensor, w1: Tensor, w2: Tensor, noise1: Tensor | None, noise2: Tensor | None) -> Tensor:
        if self.upsample:
            if self.fused:
                x = F.conv_transpose2d(x, corner_sum_kernel(self.conv_1), stride=2, padding=1)
            else:
                x = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), self.conv_1, padding=1)
            x = blur(x, self.blur_kernel)
        x = generator_epilogue(x, noise1, self.noise_weight_1, self.bias_1, self.style_1(w1))
        x = F.conv2d(x, self.conv_2, padding=1)
        return generator_epilogue(x, noise2, self.noise_weight_2, self.bias_2, self.style_2(w2))


class Generator(nn.Module):
    """G: styles [N, 2L, D] + 2L noise maps -> images [N, C, R, R]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        chans = cfg.generator_channels
        self.const = nn.Parameter(torch.ones(1, chans[0], 4, 4))
        self.blocks = nn.ModuleList(
            GeneratorBlock(chans[max(i - 1, 0)], chans[i], cfg.latent_size, upsample=i > 0,
                           fused=cfg.generator_fused[i])
            for i in range(cfg.layer_count)
        )
        # One to_rgb per resolution for progressive training; inference uses the last.
        self.to_rgb = nn.ModuleList(nn.Conv2d(c, cfg.channels, 1) for c in chans)
        for conv in self.to_rgb:
            _init_linear(conv, 0.03)

    def forward(self, styles: Tensor, noise: list[Tensor | None], lod: int | None = None,
                blend: float = 1.0) -> Tensor:
        """Images [N, C, r, r], r = 4 * 2**lod (default lod: the last block, r = R).

        Progressive training: only blocks 0..lod run (styles and noise beyond them are ignored); with
        blend < 1 the output is lerp(upsampled to_rgb[lod-1] of block lod-1, to_rgb[lod] of block lod, blend).
        """
        lod = len(self.blocks) - 1 if lod is None else lod
        if not 0 <= lod < len(self.blocks) or (blend < 1.0 and lod == 0):
            raise ValueError(f"lod={lod}, blend={blend}: need 0 <= lod < {len(self.blocks)}, and lod >= 1 to blend")
        x = self.const  # [1, c0, 4, 4]; the batch axis appears with the first noise or AdaIN
        for i, block in enumerate(islice(self.blocks, lod + 1)):  # a ModuleList slice would build a module per call
            if i == lod and blend < 1.0:
                prev = self.to_rgb[lod - 1](x)  # [N, C, r/2, r/2]
            x = block(x, styles[:, 2 * i], styles[:, 2 * i + 1], noise[2 * i], noise[2 * i + 1])
        x = self.to_rgb[lod](x)
        if blend < 1.0:
            x = torch.lerp(F.interpolate(prev, scale_factor=2.0, mode="nearest"), x, blend)
        return x


class EncoderBlock(nn.Module):
    """One encoder block: conv_1, epilogue (style 1), blur, downsampling conv_2, epilogue (style 2)."""

    def __init__(self, in_ch: int, out_ch: int, latent_size: int, fused: bool):
        super().__init__()
        self.fused = fused
        self.conv_1 = nn.Parameter(torch.randn(in_ch, in_ch, 3, 3) * math.sqrt(2.0 / (in_ch * 9)))
        self.bias_1 = nn.Parameter(torch.zeros(in_ch))
        self.register_buffer("blur_kernel", _blur_buffer(in_ch), persistent=False)
        self.conv_2 = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3) * math.sqrt(2.0 / (in_ch * 9)))
        self.bias_2 = nn.Parameter(torch.zeros(out_ch))
        self.style_1 = nn.Linear(2 * in_ch, latent_size)
        self.style_2 = nn.Linear(2 * out_ch, latent_size)
        for style in (self.style_1, self.style_2):
            _init_linear(style, math.sqrt(2.0))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, stats_1 = encoder_epilogue(F.conv2d(x, self.conv_1, padding=1), self.bias_1)
        x = blur(x, self.blur_kernel)
        if self.fused:
            x = F.conv2d(x, corner_sum_kernel(self.conv_2) * 0.25, stride=2, padding=1)
        else:
            x = F.avg_pool2d(F.conv2d(x, self.conv_2, padding=1), 2, 2)
        x, stats_2 = encoder_epilogue(x, self.bias_2)
        return x, self.style_1(stats_1) + self.style_2(stats_2)


class Encoder(nn.Module):
    """E: images [N, C, R, R] -> w [N, D], the sum of the 2L style terms."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.latent_size = cfg.latent_size
        # One from_rgb per resolution for progressive training; inference uses the first.
        self.from_rgb = nn.ModuleList(nn.Conv2d(cfg.channels, c_in, 1) for c_in, _ in cfg.encoder_channels)
        for conv in self.from_rgb:
            _init_linear(conv, math.sqrt(2.0))
        self.blocks = nn.ModuleList(
            EncoderBlock(c_in, c_out, cfg.latent_size, fused=cfg.encoder_fused[i])
            for i, (c_in, c_out) in enumerate(cfg.encoder_channels)
        )

    def _from_rgb(self, i: int, x: Tensor) -> Tensor:
        # leaky_relu twice: once inside the official FromRGB, once after it.
        return F.leaky_relu(F.leaky_relu(self.from_rgb[i](x), LRELU_SLOPE), LRELU_SLOPE)

    def forward(self, x: Tensor, lod: int | None = None, blend: float = 1.0) -> Tensor:
        """w [N, D] from images [N, C, r, r], r = 4 * 2**lod (default lod: the last, r = R).

        Progressive training: x enters at block L-1-lod through its from_rgb; with blend < 1 that block's
        output and style terms are faded in (times blend) over from_rgb of the 2x2-average-pooled x.
        """
        start = 0 if lod is None else len(self.blocks) - 1 - lod
        blended = blend < 1.0
        if not 0 <= start < len(self.blocks) or (blended and start == len(self.blocks) - 1):
            raise ValueError(f"lod={lod}, blend={blend}: need 0 <= lod < {len(self.blocks)}, and lod >= 1 to blend")
        x_half = F.avg_pool2d(x, 2, 2) if blended else None  # [N, C, r/2, r/2]
        x = self._from_rgb(start, x)
        w = None  # [N, D], the sum of the style terms; starting from the first, not from zeros, saves two launches
        for i, block in enumerate(islice(self.blocks, start, None), start):
            x, style = block(x)
            if i == start and blended:
                x = torch.lerp(self._from_rgb(start + 1, x_half), x, blend)
                style = style * blend
            w = style if w is None else w + style
        return w


class StyleALAE(nn.Module):
    """The four networks and `dlatent_avg` [2L, D]: the whole inference state of a StyleALAE model.

    The other training methods (alae_rt.methods) build on the same blocks and pass their own parts: a mapping
    (IntroVAE: none, LIA: an invertible flow), an encoder, and whether there is a latent discriminator head.
    """

    method = "alae"  # the training method whose network this is (the checkpoint's "method")

    def __init__(self, cfg: ModelConfig, *, mapping: nn.Module | None = None, encoder: nn.Module | None = None,
                 head: bool = True):
        super().__init__()
        self.config = cfg
        self.mapping = MappingF(cfg) if mapping is None else mapping
        self.generator = Generator(cfg)
        self.encoder = Encoder(cfg) if encoder is None else encoder
        self.head = DiscriminatorHead(cfg) if head else None
        self.register_buffer("dlatent_avg", torch.zeros(cfg.num_styles, cfg.latent_size))

    def truncate(self, styles: Tensor, psi: float, cutoff: int) -> Tensor:
        """lerp(dlatent_avg, styles, psi) on style inputs < cutoff, as the official code. styles [N, 2L, D]."""
        layer = torch.arange(styles.shape[1], device=styles.device)[None, :, None]
        coefs = torch.where(layer < cutoff, psi, 1.0).to(styles.dtype)
        return torch.lerp(self.dlatent_avg.to(styles.dtype), styles, coefs)
