"""Triton kernel of modulated_blur (the op, its reference and its launcher are in modulated_blur.py)."""

import triton
import triton.language as tl

from alae_rt.kernels._triton_helpers import blur_tap, leaky_relu, store_sample_stats


@triton.jit
def modulated_blur_kernel(x_ptr, x_stride_n, mean_ptr, scale_ptr, shift_ptr, noise_ptr, noise_stride_n, nw_ptr,
                          bias_ptr, out_ptr, part_ptr, M, C, H, W, N_SLOTS,
                          HAS_MOD: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
                          STATS: tl.constexpr, SLOPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (cdiv(M, BLOCK_M), cdiv(C, BLOCK_C)): a [positions (across the batch), channels] tile of an NHWC map.
    Each of the nine taps is modulated, (x - mean) * scale + shift, and zeroed outside the image (the padding lies
    outside the modulated map). Then noise, bias, leaky_relu, one store and the per-(sample, channel) statistics
    partials. (s * blur(x) - s * mean * blur(1) would take one FMA a value instead of nine, but a mean large
    against the spread cancels there: the mean comes off each tap.)"""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    hw = H * W
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    n_row = offs_m // hw
    r = offs_m % hw
    oh = r // W
    ow = r % W
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    x_rows = x_ptr + n_row.to(tl.int64) * x_stride_n
    if HAS_MOD:
        mod = n_row[:, None] * C + offs_c[None, :]
        both = mask_m[:, None] & mask_c[None, :]
        mu = tl.load(mean_ptr + mod, mask=both, other=0.0)
        sc = tl.load(scale_ptr + mod, mask=both, other=0.0)
        sh = tl.load(shift_ptr + mod, mask=both, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for dy in tl.static_range(3):
        for dx in tl.static_range(3):
            ih = oh + (dy - 1)
            iw = ow + (dx - 1)
            inside = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            tap = blur_tap(dy) * blur_tap(dx)
            valid = inside[:, None] & mask_c[None, :]
            v = tl.load(x_rows[:, None] + ((ih * W + iw) * C)[:, None] + offs_c[None, :], mask=valid,
                        other=0.0).to(tl.float32)
            if HAS_MOD:
                v = tl.where(valid, (v - mu) * sc + sh, 0.0)
            acc += tap * v
    if HAS_NOISE:
        nw = tl.load(nw_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        nz = tl.load(noise_ptr + n_row.to(tl.int64) * noise_stride_n + r, mask=mask_m, other=0.0).to(tl.float32)
        acc += nz[:, None] * nw[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    if ACT:
        acc = leaky_relu(acc, SLOPE)
    out_rows = (n_row.to(tl.int64) * hw + r) * C
    tl.store(out_ptr + out_rows[:, None] + offs_c[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_c[None, :])
    if STATS:
        store_sample_stats(part_ptr, acc, n_row, mask_m, offs_c, mask_c, pid_m * BLOCK_M, M, hw, C, 0, N_SLOTS,
                           BLOCK_M)
