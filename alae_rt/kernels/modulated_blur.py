"""modulated_blur: the [1, 2, 1] blur of a modulated NHWC map (`(x - mean) * scale + shift` per (sample, channel),
zero padding after it), then noise, bias, leaky_relu and the output's per-(sample, channel) statistics - the bandwidth
pass between modulated_conv's layers: the decoder's blur after each up-sampling conv (with the epilogue), the
encoder's normalise-and-blur before each down-sampling conv (without). Tensors [N, C, H, W] in channels-last
memory, as modulated_conv's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alae_rt.kernels._dispatch import broadcast_stride, interpreting, use_triton
from alae_rt.kernels.act_stats import merge_stats
from alae_rt.kernels.common import LRELU_SLOPE, blur

CL = torch.channels_last


def modulated_blur(x: Tensor, mean: Tensor | None = None, scale: Tensor | None = None, shift: Tensor | None = None,
                   noise: Tensor | None = None, noise_weight: Tensor | None = None, bias: Tensor | None = None,
                   act: bool = False, stats: bool = False, impl: str = "auto"
                   ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """See modulated_blur_ref; the Triton path reads x once and writes the result once."""
    if not use_triton(impl, x):
        return modulated_blur_ref(x, mean, scale, shift, noise, noise_weight, bias, act, stats)
    return _modulated_blur_triton(x, mean, scale, shift, noise, noise_weight, bias, act, stats)


def modulated_blur_ref(x: Tensor, mean: Tensor | None = None, scale: Tensor | None = None,
                       shift: Tensor | None = None, noise: Tensor | None = None, noise_weight: Tensor | None = None,
                       bias: Tensor | None = None, act: bool = False, stats: bool = False
                       ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """y = blur((x - mean) * scale + shift) (+ noise_weight * noise + bias, leaky_relu if act) and its statistics.

    x [N, C, H, W]; mean, scale, shift [N, C], or all None; noise [N or 1, 1, H, W]; noise_weight, bias [C].
    Returns (y in x's dtype, channels last; mean, biased var [N, C] fp32, or None when not stats). fp32 math."""
    y = x.float()
    n, c = y.shape[:2]
    if scale is not None:
        y = (y - mean.float().view(n, c, 1, 1)) * scale.float().view(n, c, 1, 1) + shift.float().view(n, c, 1, 1)
    y = blur(y)
    if noise is not None:
        y = torch.addcmul(y, noise_weight.float().view(1, c, 1, 1), noise.float())
    if bias is not None:
        y = y + bias.float().view(1, c, 1, 1)
    if act:
        y = F.leaky_relu(y, LRELU_SLOPE)
    y_mean = y_var = None
    if stats:
        y_var, y_mean = torch.var_mean(y, dim=(2, 3), correction=0)
    return y.to(x.dtype).contiguous(memory_format=CL), y_mean, y_var


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _modulated_blur_triton(x: Tensor, mean: Tensor | None, scale: Tensor | None, shift: Tensor | None,
                           noise: Tensor | None, noise_weight: Tensor | None, bias: Tensor | None, act: bool,
                           stats: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    # Imported here: Triton is optional (the CPU build of torch has none), the reference needs none.
    from alae_rt.kernels._modulated_blur_triton import modulated_blur_kernel

    x = x.contiguous(memory_format=CL)
    n, c, h, w = x.shape
    m = n * h * w
    block_c = min(64, max(16, _pow2(c)))
    # ~8K values a program (a 16-channel 1024 map: 512 positions); the interpreter's cost is per program
    block_m = max(16, min(_pow2(m), (65536 if interpreting() else 8192) // block_c))
    slots = -(-(h * w) // block_m) + 1
    out = torch.empty_like(x, memory_format=CL)
    partials = torch.zeros(n, c, slots if stats else 1, 3, device=x.device, dtype=torch.float32)
    dummy = x  # stands in for absent pointers; never read
    modulated_blur_kernel[(-(-m // block_m), -(-c // block_c))](
        x, broadcast_stride(x), mean.float().contiguous() if scale is not None else dummy,
        scale.float().contiguous() if scale is not None else dummy,
        shift.float().contiguous() if shift is not None else dummy,
        noise.contiguous() if noise is not None else dummy, h * w if noise is not None and noise.shape[0] > 1 else 0,
        noise_weight if noise is not None else dummy, bias if bias is not None else dummy, out, partials,
        m, c, h, w, slots, HAS_MOD=scale is not None, HAS_NOISE=noise is not None, HAS_BIAS=bias is not None,
        ACT=act, STATS=stats, SLOPE=LRELU_SLOPE, BLOCK_M=block_m, BLOCK_C=block_c,
    )
    if not stats:
        return out, None, None
    y_mean, y_var = merge_stats(partials)
    return out, y_mean, y_var
