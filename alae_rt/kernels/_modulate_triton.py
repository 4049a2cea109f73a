"""Triton kernel of modulate (the op, its reference and its launcher are in modulate.py)."""

import triton
import triton.language as tl

from alae_rt.kernels._triton_helpers import blur_tap


@triton.jit
def modulate_kernel(t_ptr, t_stride_n, mean_ptr, scale_ptr, shift_ptr, y_ptr, C,
                    H: tl.constexpr, W: tl.constexpr, POST_BLUR: tl.constexpr, BLOCK: tl.constexpr):
    """Grid ((sample, channel) rows, blocks of a row's H*W positions): y = (t - mean) * scale + shift in fp32, with
    the row's three coefficients loaded once; POST_BLUR blurs that modulated map (its zero padding outside it, as
    in the network). The plane's size is a compile-time constant (one build per resolution): a position's row and
    column are then a shift and a mask, not a division (the flat-index version divided five times in int64 per
    output element and ran the blur at 180-280 GB/s on an H200)."""
    row = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = pos < H * W
    n = row // C
    c = row % C
    mu = tl.load(mean_ptr + row)
    sc = tl.load(scale_ptr + row)
    sh = tl.load(shift_ptr + row)
    t_row = t_ptr + n.to(tl.int64) * t_stride_n + c.to(tl.int64) * (H * W)
    if POST_BLUR:
        h = pos // W
        w = pos % W
        y = tl.zeros((BLOCK,), dtype=tl.float32)
        for dy in tl.static_range(3):
            for dx in tl.static_range(3):
                ih = h + (dy - 1)
                iw = w + (dx - 1)
                inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                v = tl.load(t_row + ih * W + iw, mask=inside, other=0.0).to(tl.float32)
                y += blur_tap(dy) * blur_tap(dx) * tl.where(inside, (v - mu) * sc + sh, 0.0)
    else:
        v = tl.load(t_row + pos, mask=mask, other=0.0).to(tl.float32)
        y = (v - mu) * sc + sh
    tl.store(y_ptr + row.to(tl.int64) * (H * W) + pos, y.to(y_ptr.dtype.element_ty), mask=mask)
