"""act_stats: t = leaky_relu(pre(y) + noise_weight * noise + bias) and t's per-(sample, channel) mean and variance,
with pre = nothing, the [1, 2, 1] blur or a 2x2 average pool: the epilogue written after the up- and
down-sampling convolutions. The consumer normalises t on load (modulate, modulated_conv3x3), so the
generator's and encoder's instance norm needs no pass of its own.

Statistics use a split reduction: a (sample, channel) row of H*W values is cut into chunks, each program
reduces its chunk to (count, mean, M2) and the chunks are merged with Chan's parallel formula, so a
1024x1024 map with 16 channels still spreads over the whole GPU and the variance stays exact in fp32.
A row that fits one program (planes up to 64x64) is reduced whole: one read, one write.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alae_rt.kernels._dispatch import broadcast_stride, use_triton
from alae_rt.kernels.common import LRELU_SLOPE, blur

SINGLE_PASS_MAX = 4096  # elements of a row reduced by one program
_BLOCK = 1024  # elements per step of a split row reduction
_TILE = 4096  # elements per program of the whole-row kernel
_PRE = {"none": 0, "blur": 1, "pool": 2}


def act_stats(y: Tensor, noise: Tensor | None = None, noise_weight: Tensor | None = None, bias: Tensor | None = None,
              pre: str = "none", batch: int | None = None, impl: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """See act_stats_ref; the Triton path writes t once and reduces the statistics on the way."""
    if not use_triton(impl, y, noise):
        return act_stats_ref(y, noise, noise_weight, bias, pre, batch)
    return _act_stats_triton(y, noise, noise_weight, bias, pre, batch)


def act_stats_ref(y: Tensor, noise: Tensor | None = None, noise_weight: Tensor | None = None,
                  bias: Tensor | None = None, pre: str = "none", batch: int | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """t = leaky_relu(pre(y) + noise_weight*noise + bias) and its per-(sample, channel) mean and biased variance.

    y [N or 1, C, H, W] (pool: [.., 2H, 2W]); noise [N or 1, 1, H, W]; noise_weight, bias [C]. pre: "none",
    "blur" (depthwise [1,2,1]^2/16, zero padding) or "pool" (2x2 average). Returns t [B, C, H, W] in y's dtype,
    mean and var [B, C] in fp32, B = batch or the broadcast batch. Computed in fp32.
    """
    x = y.float()
    if pre == "blur":
        x = blur(x)
    elif pre == "pool":
        x = F.avg_pool2d(x, 2, 2)
    c = x.shape[1]
    if noise is not None:
        x = torch.addcmul(x, noise_weight.float().view(1, c, 1, 1), noise.float())
    if bias is not None:
        x = x + bias.float().view(1, c, 1, 1)
    x = F.leaky_relu(x, LRELU_SLOPE)
    if batch is not None and x.shape[0] != batch:
        x = x.expand(batch, -1, -1, -1)
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0)
    return x.to(y.dtype), mean, var


def merge_stats(partials: Tensor) -> tuple[Tensor, Tensor]:
    """(count, mean, M2) partials [..., S, 3] -> mean and biased variance [...], merged exactly in fp32."""
    count, mean, m2 = partials.unbind(-1)
    total = count.sum(-1)
    grand = (count * mean).sum(-1) / total
    var = (m2 + count * (mean - grand[..., None]) ** 2).sum(-1) / total
    return grand, var


# ---- launcher ----------------------------------------------------------------------------------------------------


def _splits(hw: int) -> tuple[int, int]:
    """(splits, chunk) of a big row: chunks are whole blocks, enough of them to fill the GPU."""
    blocks = -(-hw // _BLOCK)
    splits = min(blocks, 64)
    chunk = -(-blocks // splits) * _BLOCK
    return -(-hw // chunk), chunk


def _row_tile(hw: int) -> tuple[int, int]:
    """(rows per program, padded row length) for rows reduced whole: about _TILE elements a program."""
    p_block = max(16, 1 << (hw - 1).bit_length())
    return max(1, _TILE // p_block), p_block


def _act_stats_triton(y: Tensor, noise: Tensor | None, noise_weight: Tensor | None, bias: Tensor | None,
                      pre: str, batch: int | None) -> tuple[Tensor, Tensor, Tensor]:
    # Imported here: Triton is optional (the CPU build of torch has none), the reference needs none.
    from alae_rt.kernels._act_stats_triton import act_stats_kernel, act_stats_split_kernel

    y = y.contiguous()
    c = y.shape[1]
    h, w = (y.shape[2] // 2, y.shape[3] // 2) if pre == "pool" else (y.shape[2], y.shape[3])
    hw = h * w
    b = batch or max(y.shape[0], noise.shape[0] if noise is not None else 1)
    t = torch.empty(b, c, h, w, device=y.device, dtype=y.dtype)
    dummy = y  # stands in for absent pointers; never read
    args = (y, broadcast_stride(y),
            noise.contiguous() if noise is not None else dummy, hw if noise is not None and noise.shape[0] > 1 else 0,
            noise_weight if noise is not None else dummy, bias if bias is not None else dummy, t)
    flags = dict(PRE=_PRE[pre], HAS_NOISE=noise is not None, HAS_BIAS=bias is not None, SLOPE=LRELU_SLOPE)
    rows = b * c
    if hw <= SINGLE_PASS_MAX:
        r_block, p_block = _row_tile(hw)
        partials = torch.empty(rows, 1, 3, device=y.device, dtype=torch.float32)
        act_stats_kernel[(-(-rows // r_block),)](*args, partials, rows, c, H=h, W=w, **flags,
                                                 R_BLOCK=r_block, P_BLOCK=p_block)
    else:
        splits, chunk = _splits(hw)
        partials = torch.empty(rows, splits, 3, device=y.device, dtype=torch.float32)
        act_stats_split_kernel[(rows, splits)](*args, partials, c, H=h, W=w, CHUNK=chunk, SPLITS=splits, **flags,
                                               BLOCK=_BLOCK)
    mean, var = merge_stats(partials.view(b, c, -1, 3))
    return t, mean, var
