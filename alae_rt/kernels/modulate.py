"""modulate: (t - mean) * scale + shift per (sample, channel) - instance norm and AdaIN as one affine map - then
optionally the [1, 2, 1] blur, whose zero padding applies to the modulated map: the input side of the
resampling convolutions, and the generator's last activation before to_rgb.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alae_rt.kernels._dispatch import broadcast_stride, use_triton
from alae_rt.kernels.common import blur

_TILE = 4096  # output elements per program, at most (a row's plane, or a block of it)


def modulate(t: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, post: str = "none", impl: str = "auto") -> Tensor:
    """See modulate_ref; the Triton path reads t once and writes the result once."""
    if not use_triton(impl, t):
        return modulate_ref(t, mean, scale, shift, post)
    return _modulate_triton(t, mean, scale, shift, post)


def modulate_ref(t: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, post: str = "none") -> Tensor:
    """(t - mean) * scale + shift per (sample, channel), then optionally the blur (its zero padding applies to
    the modulated map). t [N or 1, C, H, W]; mean, scale, shift [N, C]. Computed in fp32, returned in t's dtype."""
    n, c = scale.shape
    x = (t.float() - mean.float().view(n, c, 1, 1)) * scale.float().view(n, c, 1, 1) + shift.float().view(n, c, 1, 1)
    if post == "blur":
        x = blur(x)
    return x.to(t.dtype)


def _modulate_triton(t: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, post: str) -> Tensor:
    # Imported here: Triton is optional (the CPU build of torch has none), the reference needs none.
    from alae_rt.kernels._modulate_triton import modulate_kernel

    t = t.contiguous()
    n, c = scale.shape
    h, w = t.shape[2], t.shape[3]
    out = torch.empty(n, c, h, w, device=t.device, dtype=t.dtype)
    block = min(_TILE, 1 << max(0, (h * w - 1).bit_length()))  # a 4x4 map: one 16-lane block a row
    modulate_kernel[(n * c, -(-(h * w) // block))](
        t, broadcast_stride(t), mean.float().contiguous(), scale.float().contiguous(), shift.float().contiguous(),
        out, c, H=h, W=w, POST_BLUR=post == "blur", BLOCK=block,
    )
    return out
