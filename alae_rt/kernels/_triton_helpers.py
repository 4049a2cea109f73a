"""@triton.jit helpers shared by the ops' kernels (imported only where Triton runs)."""

import triton
import triton.language as tl


@triton.jit
def blur_tap(d):
    # One axis of the [1, 2, 1] / 4 kernel at offset d - 1 (d = 0, 1, 2): common.blur_weight is its outer square.
    return 0.25 * (2 - (d - 1) * (d - 1))


@triton.jit
def leaky_relu(v, SLOPE: tl.constexpr):
    return tl.where(v >= 0, v, v * SLOPE)


@triton.jit
def store_sample_stats(part_ptr, acc, n_row, mask_m, offs_n, mask_n, row0, M, HW, COUT, slot0, N_SLOTS,
                       BLOCK_M: tl.constexpr):
    """The (count, mean, M2) per column of an [BLOCK_M rows, columns] fp32 tile whose rows are positions flattened
    across the batch (row0 the first, n_row each one's sample, HW positions a sample): one partial per sample
    segment the tile holds - 4x4 and 8x8 maps put several samples in a tile - into partials [N, COUT, N_SLOTS, 3]
    at slot slot0 + (this tile - the first tile holding a row of that sample); act_stats.merge_stats merges them."""
    last = tl.minimum(row0 + BLOCK_M, M) - 1
    tile = row0 // BLOCK_M
    for s in range(row0 // HW, last // HW + 1):
        seg = mask_m & (n_row == s)
        count = tl.sum(seg.to(tl.float32), axis=0)
        mean = tl.sum(tl.where(seg[:, None], acc, 0.0), axis=0) / count
        dev = tl.where(seg[:, None], acc - mean[None, :], 0.0)
        m2 = tl.sum(dev * dev, axis=0)
        part = part_ptr + ((s * COUT + offs_n) * N_SLOTS + slot0 + tile - (s * HW) // BLOCK_M) * 3
        tl.store(part, mean * 0.0 + count, mask=mask_n)
        tl.store(part + 1, mean, mask=mask_n)
        tl.store(part + 2, m2, mask=mask_n)
