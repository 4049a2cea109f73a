"""What the ops' torch references and the network share: the leaky_relu slope, the instance-norm eps values and
the [1, 2, 1] blur, defined here once (alae_rt.network imports them; the Triton kernels get them as constexprs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LRELU_SLOPE = 0.2
GEN_NORM_EPS = 1e-8  # generator instance norm (official: InstanceNorm2d(eps=1e-8))
ENC_NORM_EPS = 1e-5  # encoder instance norm (official: InstanceNorm2d default eps)


def blur_weight(channels: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Depthwise [1, 2, 1] x [1, 2, 1] / 16 kernel, [channels, 1, 3, 3] (the official Blur buffer).

    Made on the device (from arange), not copied there: a copy from host memory waits for the GPU's queued work,
    at every blur of a forward pass. (Eager encode at batch 1 on an H200 took 9.0 ms with such copies, the
    official order, which makes its blur weights once, 5.8.)"""
    f = 2.0 - (torch.arange(3, dtype=torch.float32, device=device) - 1.0).abs()  # [1, 2, 1], exact
    k = f[:, None] * f[None, :] / 16.0
    # contiguous, as the official `repeat` makes it: an expanded weight costs each convolution a copy
    return k.expand(channels, 1, 3, 3).to(dtype=dtype).contiguous()


def blur(x: Tensor, weight: Tensor | None = None) -> Tensor:
    """The depthwise blur with zero padding, x [N, C, H, W] -> [N, C, H, W]; weight: `blur_weight(C)` made once by
    the caller (the network's blocks hold theirs), or None to make it here, at every call."""
    if weight is None:
        weight = blur_weight(x.shape[1], x.dtype, x.device)
    return F.conv2d(x, weight, padding=1, groups=x.shape[1])
