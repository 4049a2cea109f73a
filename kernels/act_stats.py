"""Per-channel epilogues: noise + bias + leaky_relu + instance norm (+ AdaIN), as torch references and Triton kernels.

Statistics use a split reduction: a (sample, channel) row of H*W values is cut into chunks, each program
reduces its chunk to (count, mean, M2) and the chunks are merged with Chan's parallel formula, so a
1024x1024 map with 16 channels still spreads over the whole GPU and the variance stays exact in fp32.
A row that fits one program (planes up to 64x64) is done in a single pass: one read, one write.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alae_rt.kernels._dispatch import use_triton

LRELU_SLOPE = 0.2
_BLUR_1D = (0.25, 0.5, 0.25)  # [1, 2, 1] / 4 per axis: the [1, 2, 1] x [1, 2, 1] / 16 blur
SINGLE_PASS_MAX = 4096  # elements of a row reduced by one program
_BLOCK = 1024  # elements per step of a split row reduction
_TILE = 4096  # elements per program of the row-block and element-wise kernels
_PRE = {"none": 0, "blur": 1, "pool": 2}


# ---- torch references -----------------------------------------------------------------------------------------


def _blur_ref(x: Tensor) -> Tensor:
    f = torch.tensor(_BLUR_1D, dtype=x.dtype, device=x.device)
    k = (f[:, None] * f[None, :]).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(x, k, padding=1, groups=x.shape[1])


def _instance_norm(x: Tensor, eps: float) -> Tensor:
    # F.instance_norm's formula, written out so that 1x1 maps are allowed too.
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + eps)


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
        x = _blur_ref(x)
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


def modulate_ref(t: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, post: str = "none") -> Tensor:
    """(t - mean) * scale + shift per (sample, channel), then optionally the blur (its zero padding applies to
    the modulated map). t [N or 1, C, H, W]; mean, scale, shift [N, C]. Computed in fp32, returned in t's dtype."""
    n, c = scale.shape
    x = (t.float() - mean.float().view(n, c, 1, 1)) * scale.float().view(n, c, 1, 1) + shift.float().view(n, c, 1, 1)
    if post == "blur":
        x = _blur_ref(x)
    return x.to(t.dtype)


def generator_epilogue_ref(x: Tensor, noise: Tensor | None, noise_weight: Tensor, bias: Tensor, style: Tensor,
                           eps: float = 1e-8) -> Tensor:
    """x + noise_weight*noise + bias, leaky_relu, instance norm (biased variance, eps), AdaIN x*(1+gamma)+beta.

    x [N or 1, C, H, W]; noise [N or 1, 1, H, W] or None; noise_weight, bias [C]; style [N, 2C] = (gamma, beta).
    """
    c = x.shape[1]
    y = x
    if noise is not None:
        y = torch.addcmul(y, noise_weight.view(1, c, 1, 1), noise)
    y = F.leaky_relu(y + bias.view(1, c, 1, 1), LRELU_SLOPE)
    y = _instance_norm(y, eps)
    s = style.view(style.shape[0], 2, c, 1, 1)
    return torch.addcmul(s[:, 1], y, s[:, 0] + 1)


def encoder_epilogue_ref(x: Tensor, bias: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """+ bias, leaky_relu, style statistics cat(mean, std) [N, 2C] (biased, no eps), instance norm (eps)."""
    y = F.leaky_relu(x + bias.view(1, -1, 1, 1), LRELU_SLOPE)
    m = torch.mean(y, dim=[2, 3], keepdim=True)
    std = torch.sqrt(torch.mean((y - m) ** 2, dim=[2, 3], keepdim=True))
    return _instance_norm(y, eps), torch.cat((m, std), dim=1).flatten(1)


def merge_stats(partials: Tensor) -> tuple[Tensor, Tensor]:
    """(count, mean, M2) partials [..., S, 3] -> mean and biased variance [...], merged exactly in fp32."""
    count, mean, m2 = partials.unbind(-1)
    total = count.sum(-1)
    grand = (count * mean).sum(-1) / total
    var = (m2 + count * (mean - grand[..., None]) ** 2).sum(-1) / total
    return grand, var


# ---- public ops ------------------------------------------------------------------------------------------------


def act_stats(y: Tensor, noise: Tensor | None = None, noise_weight: Tensor | None = None, bias: Tensor | None = None,
              pre: str = "none", batch: int | None = None, impl: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """See act_stats_ref; the Triton path writes t once and reduces the statistics on the way."""
    if not use_triton(impl, y, noise):
        return act_stats_ref(y, noise, noise_weight, bias, pre, batch)
    return _act_stats_triton(y, noise, noise_weight, bias, pre, batch)


def modulate(t: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, post: str = "none", impl: str = "auto") -> Tensor:
    """See modulate_ref; the Triton path reads t once and writes the result once."""
    if not use_triton(impl, t):
        return modulate_ref(t, mean, scale, shift, post)
    return _modulate_triton(t, mean, scale, shift, post)


def generator_epilogue(x: Tensor, noise: Tensor | None, noise_weight: Tensor, bias: Tensor, style: Tensor,
                       eps: float = 1e-8, impl: str = "auto") -> Tensor:
    """See generator_epilogue_ref. Triton: one read and one write of x for planes up to 64x64; larger ones
    take a split reduction of the statistics, then the normalising pass."""
    if not use_triton(impl, x, noise):
        return generator_epilogue_ref(x, noise, noise_weight, bias, style, eps)
    n, c = style.shape[0], x.shape[1]
    gamma, beta = style.view(n, 2, c).float().unbind(1)
    return _epilogue_triton(x, noise, noise_weight, bias, gamma, beta, eps, batch=n)[0]


def encoder_epilogue(x: Tensor, bias: Tensor, eps: float = 1e-5, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """See encoder_epilogue_ref; the Triton path is the generator's without noise or AdaIN."""
    if not use_triton(impl, x):
        return encoder_epilogue_ref(x, bias, eps)
    y, mean, var = _epilogue_triton(x, None, None, bias, None, None, eps, batch=x.shape[0])
    return y, torch.cat((mean, var.sqrt()), dim=1).to(x.dtype)


# ---- Triton ------------------------------------------------------------------------------------------------------
# Imported lazily: the kernels module is optional (the CPU build of torch has no Triton).


def _kernels():
    from alae_rt.kernels import _epilogue_kernels

    return _epilogue_kernels


def _plane(y: Tensor, pre: str) -> tuple[int, int]:
    h, w = y.shape[2], y.shape[3]
    return (h // 2, w // 2) if pre == "pool" else (h, w)


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


def _batch_stride(t: Tensor) -> int:
    return t.stride(0) if t.shape[0] > 1 else 0  # a batch of one broadcasts


def _act_stats_triton(y: Tensor, noise: Tensor | None, noise_weight: Tensor | None, bias: Tensor | None,
                      pre: str, batch: int | None) -> tuple[Tensor, Tensor, Tensor]:
    k = _kernels()
    y = y.contiguous()
    c = y.shape[1]
    h, w = _plane(y, pre)
    hw = h * w
    b = batch or max(y.shape[0], noise.shape[0] if noise is not None else 1)
    t = torch.empty(b, c, h, w, device=y.device, dtype=y.dtype)
    dummy = y  # stands in for absent pointers; never read
    args = (y, _batch_stride(y),
            noise.contiguous() if noise is not None else dummy, hw if noise is not None and noise.shape[0] > 1 else 0,
            noise_weight if noise is not None else dummy, bias if bias is not None else dummy)
    flags = dict(PRE=_PRE[pre], HAS_NOISE=noise is not None, HAS_BIAS=bias is not None, STORE_T=True)
    rows = b * c
    if hw <= SINGLE_PASS_MAX:
        r_block, p_block = _row_tile(hw)
        partials = torch.empty(rows, 1, 3, device=y.device, dtype=torch.float32)
        k.rows_stats_kernel[(-(-rows // r_block),)](*args, t, partials, rows, c, h, w, **flags,
                                                     R_BLOCK=r_block, P_BLOCK=p_block)
    else:
        splits, chunk = _splits(hw)
        partials = torch.empty(rows, splits, 3, device=y.device, dtype=torch.float32)
        k.row_stats_kernel[(rows, splits)](*args, t, partials, c, h, w, chunk, splits, **flags, BLOCK=_BLOCK)
    mean, var = merge_stats(partials.view(b, c, -1, 3))
    return t, mean, var


def _modulate_triton(t: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, post: str) -> Tensor:
    k = _kernels()
    t = t.contiguous()
    n, c = scale.shape
    h, w = t.shape[2], t.shape[3]
    out = torch.empty(n, c, h, w, device=t.device, dtype=t.dtype)
    total = out.numel()
    k.apply_kernel[(-(-total // _TILE),)](
        t, _batch_stride(t), t, 0, t, t, mean.float().contiguous(), scale.float().contiguous(),
        shift.float().contiguous(), out, total, c, h, w,
        ACTIVATE=False, HAS_NOISE=False, POST_BLUR=post == "blur", BLOCK=_TILE,
    )
    return out


def _epilogue_triton(x: Tensor, noise: Tensor | None, noise_weight: Tensor | None, bias: Tensor,
                     gamma: Tensor | None, beta: Tensor | None, eps: float, batch: int
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Shared by the generator (noise, AdaIN) and encoder (neither) epilogues -> (y, mean, var)."""
    k = _kernels()
    x = x.contiguous()
    c, h, w = x.shape[1:]
    hw = h * w
    rows = batch * c
    y = torch.empty(batch, c, h, w, device=x.device, dtype=x.dtype)
    dummy = x
    args = (x, _batch_stride(x),
            noise.contiguous() if noise is not None else dummy, hw if noise is not None and noise.shape[0] > 1 else 0,
            noise_weight if noise is not None else dummy, bias)
    affine = gamma is not None
    if hw <= SINGLE_PASS_MAX:
        stats = torch.empty(rows, 2, device=x.device, dtype=torch.float32)
        r_block, p_block = _row_tile(hw)
        k.rows_epilogue_kernel[(-(-rows // r_block),)](
            *args, gamma.contiguous() if affine else dummy, beta.contiguous() if affine else dummy,
            y, stats, rows, c, hw, eps, HAS_NOISE=noise is not None, AFFINE=affine, R_BLOCK=r_block, P_BLOCK=p_block,
        )
        mean, var = stats.view(batch, c, 2).unbind(-1)
        return y, mean, var
    splits, chunk = _splits(hw)
    partials = torch.empty(rows, splits, 3, device=x.device, dtype=torch.float32)
    k.row_stats_kernel[(rows, splits)](
        *args, dummy, partials, c, h, w, chunk, splits,
        PRE=0, HAS_NOISE=noise is not None, HAS_BIAS=True, STORE_T=False, BLOCK=_BLOCK,
    )
    mean, var = merge_stats(partials.view(batch, c, splits, 3))
    rstd = torch.rsqrt(var + eps)
    scale = rstd * (1 + gamma) if affine else rstd
    shift = beta if affine else torch.zeros_like(rstd)
    k.apply_kernel[(-(-y.numel() // _TILE),)](
        *args, mean.contiguous(), scale.contiguous(), shift.contiguous(), y, y.numel(), c, h, w,
        ACTIVATE=True, HAS_NOISE=noise is not None, POST_BLUR=False, BLOCK=_TILE,
    )
    return y, mean, var
