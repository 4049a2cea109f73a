"""Triton kernels of act_stats (the op, its reference and its launcher are in act_stats.py).

A row is one (sample, channel) plane of H*W values, flattened; arithmetic and statistics are fp32 whatever the
storage dtype. H and W are compile-time constants (one build per resolution): a flat position's row and column
are then a shift and a mask, not divisions. Rows that fit one program are reduced whole (act_stats_kernel);
bigger ones are cut into chunks that leave (count, mean, M2) partials (act_stats_split_kernel), merged by
act_stats.merge_stats.
"""

import triton
import triton.language as tl

from alae_rt.kernels._triton_helpers import blur_tap, leaky_relu


@triton.jit
def _act_stats_value(x_row, noise_row, nw, b, offs, mask, H, W,
                     PRE: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, SLOPE: tl.constexpr):
    """leaky_relu(pre(x) + nw * noise + b) at flat positions `offs` of an H x W output plane, in fp32."""
    if PRE == 0:
        v = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
    elif PRE == 1:  # 3x3 blur, zero padding
        h = offs // W
        w = offs % W
        v = tl.zeros(offs.shape, dtype=tl.float32)
        for dy in tl.static_range(3):
            for dx in tl.static_range(3):
                ih = h + (dy - 1)
                iw = w + (dx - 1)
                inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                tap = tl.load(x_row + ih * W + iw, mask=inside, other=0.0).to(tl.float32)
                v += blur_tap(dy) * blur_tap(dx) * tap
    else:  # 2x2 average pool of a 2H x 2W input
        h = offs // W
        w = offs % W
        base = x_row + (2 * h) * (2 * W) + 2 * w
        v = tl.load(base, mask=mask, other=0.0).to(tl.float32)
        v += tl.load(base + 1, mask=mask, other=0.0).to(tl.float32)
        v += tl.load(base + 2 * W, mask=mask, other=0.0).to(tl.float32)
        v += tl.load(base + 2 * W + 1, mask=mask, other=0.0).to(tl.float32)
        v = v * 0.25
    if HAS_NOISE:
        v += nw * tl.load(noise_row + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += b
    return leaky_relu(v, SLOPE)


@triton.jit
def act_stats_kernel(x_ptr, x_stride_n, noise_ptr, noise_stride_n, nw_ptr, bias_ptr, t_ptr, part_ptr,
                     ROWS, C, H: tl.constexpr, W: tl.constexpr,
                     PRE: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, SLOPE: tl.constexpr,
                     R_BLOCK: tl.constexpr, P_BLOCK: tl.constexpr):
    """Grid (row blocks,): planes up to act_stats.SINGLE_PASS_MAX, R_BLOCK whole rows per program as an
    [R_BLOCK, P_BLOCK] tile (so 4x4 maps do not leave a block's lanes idle): t stored, (count, mean, M2)
    partials [rows, 1, 3]."""
    rows = tl.program_id(0) * R_BLOCK + tl.arange(0, R_BLOCK)
    rmask = rows < ROWS
    pos = tl.arange(0, P_BLOCK)
    hw = H * W
    mask = rmask[:, None] & (pos < hw)[None, :]
    n = (rows // C).to(tl.int64)
    c = rows % C
    in_plane = hw * 4 if PRE == 2 else hw
    x_rows = x_ptr + (n * x_stride_n + c.to(tl.int64) * in_plane)[:, None]
    nw = 0.0
    b = 0.0
    if HAS_NOISE:
        nw = tl.load(nw_ptr + c, mask=rmask, other=0.0).to(tl.float32)[:, None]
    if HAS_BIAS:
        b = tl.load(bias_ptr + c, mask=rmask, other=0.0).to(tl.float32)[:, None]
    v = _act_stats_value(x_rows, noise_ptr + (n * noise_stride_n)[:, None], nw, b, pos[None, :], mask, H, W,
                         PRE, HAS_NOISE, HAS_BIAS, SLOPE)
    tl.store(t_ptr + rows.to(tl.int64)[:, None] * hw + pos[None, :], v.to(t_ptr.dtype.element_ty), mask=mask)
    mean = tl.sum(tl.where(mask, v, 0.0), axis=1) / hw
    dev = tl.where(mask, v - mean[:, None], 0.0)
    m2 = tl.sum(dev * dev, axis=1)
    out = part_ptr + rows * 3
    tl.store(out, tl.zeros((R_BLOCK,), dtype=tl.float32) + hw, mask=rmask)
    tl.store(out + 1, mean, mask=rmask)
    tl.store(out + 2, m2, mask=rmask)


@triton.jit
def act_stats_split_kernel(x_ptr, x_stride_n, noise_ptr, noise_stride_n, nw_ptr, bias_ptr, t_ptr, part_ptr,
                           C, H: tl.constexpr, W: tl.constexpr, CHUNK, SPLITS,
                           PRE: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, SLOPE: tl.constexpr,
                           BLOCK: tl.constexpr):
    """Grid (rows, splits): bigger planes, one chunk of a row per program: t stored, the chunk reduced to
    (count, mean, M2) partials [rows, splits, 3] by Chan's merge of per-block moments."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    n = row // C
    c = row % C
    hw = H * W
    in_plane = hw * 4 if PRE == 2 else hw
    x_row = x_ptr + n.to(tl.int64) * x_stride_n + c.to(tl.int64) * in_plane
    noise_row = noise_ptr + n.to(tl.int64) * noise_stride_n
    nw = 0.0
    b = 0.0
    if HAS_NOISE:
        nw = tl.load(nw_ptr + c).to(tl.float32)
    if HAS_BIAS:
        b = tl.load(bias_ptr + c).to(tl.float32)
    count = 0.0
    mean = 0.0
    m2 = 0.0
    start = split * CHUNK
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < hw
        v = _act_stats_value(x_row, noise_row, nw, b, offs, mask, H, W, PRE, HAS_NOISE, HAS_BIAS, SLOPE)
        tl.store(t_ptr + row.to(tl.int64) * hw + offs, v.to(t_ptr.dtype.element_ty), mask=mask)
        block_count = tl.sum(mask.to(tl.float32), axis=0)
        block_mean = tl.sum(tl.where(mask, v, 0.0), axis=0) / tl.maximum(block_count, 1.0)
        dev = tl.where(mask, v - block_mean, 0.0)
        block_m2 = tl.sum(dev * dev, axis=0)
        total = count + block_count
        delta = block_mean - mean
        mean += delta * block_count / tl.maximum(total, 1.0)
        m2 += block_m2 + delta * delta * count * block_count / tl.maximum(total, 1.0)
        count = total
    out = part_ptr + (row * SPLITS + split) * 3
    tl.store(out, count)
    tl.store(out + 1, mean)
    tl.store(out + 2, m2)
