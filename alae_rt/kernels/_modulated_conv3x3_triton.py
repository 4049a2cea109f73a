"""Triton kernel of modulated_conv3x3 (the op, its reference and its launcher are in modulated_conv3x3.py)."""

import triton
import triton.language as tl

from alae_rt.kernels._triton_helpers import leaky_relu


@triton.jit
def modulated_conv3x3_kernel(t_ptr, t_stride_n, mean_ptr, scale_ptr, shift_ptr, w_ptr,
                             noise_ptr, noise_stride_n, nw_ptr, bias_ptr, out_ptr, part_ptr,
                             CIN, COUT, H, W, TILES_M,
                             HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, SLOPE: tl.constexpr,
                             INPUT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Grid (position tiles, output-channel tiles, samples). A [BLOCK_M positions, BLOCK_K input channels]
    tile per tap is loaded from t (NCHW), modulated in fp32 and zeroed outside the image; B is the packed
    weight [9, CIN, COUT]; the fp32 accumulator takes noise, bias and leaky_relu, is stored once, and leaves
    per-channel (count, mean, M2) partials [N, COUT, TILES_M, 3] for the next layer's normalisation."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    hw = H * W
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < hw
    oh = offs_m // W
    ow = offs_m % W
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < COUT
    t_base = t_ptr + n * t_stride_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, CIN, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < CIN
        mu = tl.load(mean_ptr + n * CIN + offs_k, mask=mask_k, other=0.0)
        sc = tl.load(scale_ptr + n * CIN + offs_k, mask=mask_k, other=0.0)
        sh = tl.load(shift_ptr + n * CIN + offs_k, mask=mask_k, other=0.0)
        for tap in tl.static_range(9):
            ih = oh + (tap // 3 - 1)
            iw = ow + (tap % 3 - 1)
            inside = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            valid = inside[:, None] & mask_k[None, :]
            a_ptrs = t_base + offs_k[None, :].to(tl.int64) * hw + (ih * W + iw)[:, None]
            a = tl.load(a_ptrs, mask=valid, other=0.0).to(tl.float32)
            # Normalise + AdaIN on load; the convolution's zero padding lies outside the modulated map.
            a = tl.where(valid, (a - mu[None, :]) * sc[None, :] + sh[None, :], 0.0)
            b_ptrs = w_ptr + tap * CIN * COUT + offs_k[:, None] * COUT + offs_n[None, :]
            b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            if DOT_FP32:
                acc += tl.dot(a, b.to(tl.float32), input_precision=INPUT_PRECISION)
            else:
                acc += tl.dot(a.to(b.dtype), b, input_precision=INPUT_PRECISION)
    if HAS_NOISE:
        nw = tl.load(nw_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        nz = tl.load(noise_ptr + n * noise_stride_n + offs_m, mask=mask_m, other=0.0).to(tl.float32)
        acc += nz[:, None] * nw[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    acc = leaky_relu(acc, SLOPE)
    out_ptrs = out_ptr + (n * COUT + offs_n[None, :]) * hw + offs_m[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
    # The tile's moments per output channel, over its valid positions.
    count = tl.sum(mask_m.to(tl.float32), axis=0)
    mean = tl.sum(tl.where(mask_m[:, None], acc, 0.0), axis=0) / count
    dev = tl.where(mask_m[:, None], acc - mean[None, :], 0.0)
    m2 = tl.sum(dev * dev, axis=0)
    part = part_ptr + ((n * COUT + offs_n) * TILES_M + pid_m) * 3
    tl.store(part, tl.zeros((BLOCK_N,), dtype=tl.float32) + count, mask=mask_n)
    tl.store(part + 1, mean, mask=mask_n)
    tl.store(part + 2, m2, mask=mask_n)
