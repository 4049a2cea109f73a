"""Triton kernel of modulate (the op, its reference and its launcher are in modulate.py)."""

import triton
import triton.language as tl

from alae_rt.kernels._triton_helpers import blur_tap


@triton.jit
def modulate_kernel(t_ptr, t_stride_n, mean_ptr, scale_ptr, shift_ptr, y_ptr, TOTAL, C, H, W,
                    POST_BLUR: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (blocks of the flattened output,): y = (t - mean) * scale + shift per (sample, channel) row, in fp32;
    POST_BLUR blurs that modulated map (its zero padding outside it, as in the network)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    hw = H * W
    row = offs // hw
    pos = offs % hw
    n = row // C
    c = row % C
    mu = tl.load(mean_ptr + row, mask=mask, other=0.0)
    sc = tl.load(scale_ptr + row, mask=mask, other=0.0)
    sh = tl.load(shift_ptr + row, mask=mask, other=0.0)
    t_row = t_ptr + n * t_stride_n + c * hw
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
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
