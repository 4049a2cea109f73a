"""Triton kernels of the per-channel epilogues (see epilogue.py for the ops and their torch references).

A row is one (sample, channel) plane of H*W values, flattened; statistics and arithmetic are fp32 whatever
the storage dtype.
"""

import triton
import triton.language as tl


@triton.jit
def _blur_tap(d):
    # One axis of the [1, 2, 1] / 4 kernel at offset d - 1 (d = 0, 1, 2).
    return 0.25 * (2 - (d - 1) * (d - 1))


@triton.jit
def _pre_activation(x_row, noise_row, nw, b, offs, mask, H, W,
                    PRE: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr):
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
                v += _blur_tap(dy) * _blur_tap(dx) * tap
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
    return tl.where(v >= 0, v, v * 0.2)


@triton.jit
def row_stats_kernel(x_ptr, x_stride_n, noise_ptr, noise_stride_n, nw_ptr, bias_ptr, t_ptr, part_ptr,
                     C, H, W, CHUNK, SPLITS,
                     PRE: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_T: tl.constexpr,
                     BLOCK: tl.constexpr):
    """Grid (rows, splits): t = leaky_relu(pre(x) + noise + bias) over one chunk of a row, optionally stored,
    reduced to (count, mean, M2) partials [rows, splits, 3] by Chan's merge of per-block moments."""
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
        v = _pre_activation(x_row, noise_row, nw, b, offs, mask, H, W, PRE, HAS_NOISE, HAS_BIAS)
        if STORE_T:
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


@triton.jit
def rows_stats_kernel(x_ptr, x_stride_n, noise_ptr, noise_stride_n, nw_ptr, bias_ptr, t_ptr, part_ptr,
                      ROWS, C, H, W,
                      PRE: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_T: tl.constexpr,
                      R_BLOCK: tl.constexpr, P_BLOCK: tl.constexpr):
    """Grid (row blocks,): small planes, R_BLOCK whole rows per program as an [R_BLOCK, P_BLOCK] tile (so 4x4
    maps do not leave a block's lanes idle); same outputs as row_stats_kernel with one split."""
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
    v = _pre_activation(x_rows, noise_ptr + (n * noise_stride_n)[:, None], nw, b, pos[None, :], mask, H, W,
                        PRE, HAS_NOISE, HAS_BIAS)
    if STORE_T:
        tl.store(t_ptr + rows.to(tl.int64)[:, None] * hw + pos[None, :], v.to(t_ptr.dtype.element_ty), mask=mask)
    mean = tl.sum(tl.where(mask, v, 0.0), axis=1) / hw
    dev = tl.where(mask, v - mean[:, None], 0.0)
    m2 = tl.sum(dev * dev, axis=1)
    out = part_ptr + rows * 3
    tl.store(out, tl.zeros((R_BLOCK,), dtype=tl.float32) + hw, mask=rmask)
    tl.store(out + 1, mean, mask=rmask)
    tl.store(out + 2, m2, mask=rmask)


@triton.jit
def rows_epilogue_kernel(x_ptr, x_stride_n, noise_ptr, noise_stride_n, nw_ptr, bias_ptr, gamma_ptr, beta_ptr,
                         y_ptr, stats_ptr, ROWS, C, HW, eps,
                         HAS_NOISE: tl.constexpr, AFFINE: tl.constexpr, R_BLOCK: tl.constexpr, P_BLOCK: tl.constexpr):
    """Grid (row blocks,): whole rows per program - one read, one write: activation, mean/var, normalise,
    optional AdaIN y*(1+gamma)+beta; stats [rows, 2] = (mean, var)."""
    rows = tl.program_id(0) * R_BLOCK + tl.arange(0, R_BLOCK)
    rmask = rows < ROWS
    pos = tl.arange(0, P_BLOCK)
    mask = rmask[:, None] & (pos < HW)[None, :]
    n = (rows // C).to(tl.int64)
    c = rows % C
    nw = 0.0
    if HAS_NOISE:
        nw = tl.load(nw_ptr + c, mask=rmask, other=0.0).to(tl.float32)[:, None]
    b = tl.load(bias_ptr + c, mask=rmask, other=0.0).to(tl.float32)[:, None]
    x_rows = x_ptr + (n * x_stride_n + c.to(tl.int64) * HW)[:, None]
    v = _pre_activation(x_rows, noise_ptr + (n * noise_stride_n)[:, None], nw, b, pos[None, :], mask, 1, HW,
                        0, HAS_NOISE, True)
    mean = tl.sum(tl.where(mask, v, 0.0), axis=1) / HW
    dev = tl.where(mask, v - mean[:, None], 0.0)
    var = tl.sum(dev * dev, axis=1) / HW
    y = dev * (1.0 / tl.sqrt(var + eps))[:, None]
    if AFFINE:
        g = tl.load(gamma_ptr + rows, mask=rmask, other=0.0)
        bt = tl.load(beta_ptr + rows, mask=rmask, other=0.0)
        y = y * (1.0 + g)[:, None] + bt[:, None]
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * HW + pos[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(stats_ptr + rows * 2, mean, mask=rmask)
    tl.store(stats_ptr + rows * 2 + 1, var, mask=rmask)


@triton.jit
def apply_kernel(x_ptr, x_stride_n, noise_ptr, noise_stride_n, nw_ptr, bias_ptr, mean_ptr, scale_ptr, shift_ptr,
                 y_ptr, TOTAL, C, H, W,
                 ACTIVATE: tl.constexpr, HAS_NOISE: tl.constexpr, POST_BLUR: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (blocks of the flattened output,): y = (v - mean) * scale + shift per row, where v is x itself or,
    with ACTIVATE, leaky_relu(x + noise + bias) recomputed from x; POST_BLUR blurs that modulated map (its
    zero padding outside it, as in the network)."""
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
    x_row = x_ptr + n * x_stride_n + c * hw
    if ACTIVATE:
        nw = 0.0
        if HAS_NOISE:
            nw = tl.load(nw_ptr + c, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(bias_ptr + c, mask=mask, other=0.0).to(tl.float32)
        v = _pre_activation(x_row, noise_ptr + n * noise_stride_n, nw, b, pos, mask, 1, hw, 0, HAS_NOISE, True)
        y = (v - mu) * sc + sh
    elif POST_BLUR:
        h = pos // W
        w = pos % W
        y = tl.zeros((BLOCK,), dtype=tl.float32)
        for dy in tl.static_range(3):
            for dx in tl.static_range(3):
                ih = h + (dy - 1)
                iw = w + (dx - 1)
                inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                v = tl.load(x_row + ih * W + iw, mask=inside, other=0.0).to(tl.float32)
                y += _blur_tap(dy) * _blur_tap(dx) * tl.where(inside, (v - mu) * sc + sh, 0.0)
    else:
        v = tl.load(x_row + pos, mask=mask, other=0.0).to(tl.float32)
        y = (v - mu) * sc + sh
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
