"""Triton kernel of modulated_conv (the op, its reference, its weight packing and its launcher are in
modulated_conv.py): one implicit GEMM for the three convolutions of the network, NHWC.

Rows are output positions flattened across the batch (M = N * HO * WO), columns output channels, and the
reduction is one loop over (tap, k-block): each step loads a [BLOCK_M, BLOCK_K] tile of the input at the tap's
shift (channels contiguous: one vector load per row), modulates it (`(a - mean) * scale + shift` per (sample,
input channel)), zeroes what lies outside the image (padding applies to the modulated map), and takes one `tl.dot`
with the packed weight's [BLOCK_K, BLOCK_N] tile. MODE picks the tap geometry:
  0 "same": 3x3, stride 1, pad 1 - 9 taps, ih = oh + ty - 1;
  1 "up":   the stride-2 transposed 4x4 (pad 1) as four output phases (program axis 2), each a 2x2 conv on the
            input grid: output (2a + py) takes taps ty = 0, 1 from ih = a + py - ty with kernel row 1 - py + 2 ty;
  2 "down": 4x4, stride 2, pad 1 - 16 taps, ih = 2 oh + ty - 1.
The epilogue on the fp32 accumulator: noise * weight + bias, leaky_relu, one store, and the output's
per-(sample, channel) (count, mean, M2) partials - a tile that spans samples (4x4 and 8x8 maps) leaves one
partial per sample segment it holds.
"""

import triton
import triton.language as tl

from alae_rt.kernels._triton_helpers import leaky_relu, store_sample_stats


@triton.jit
def modulated_conv_kernel(x_ptr, x_stride_n, mean_ptr, scale_ptr, shift_ptr, w_ptr,
                          noise_ptr, noise_stride_n, nw_ptr, bias_ptr, out_ptr, part_ptr,
                          M, CIN, COUT, H, W, HO, WO, SLOTS,
                          MODE: tl.constexpr, TAPS_W: tl.constexpr, STRIDE: tl.constexpr,
                          HAS_MOD: tl.constexpr, ONE_SAMPLE_TILES: tl.constexpr,
                          HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STATS: tl.constexpr,
                          SLOPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Grid (cdiv(M, BLOCK_M), cdiv(COUT, BLOCK_N), 4 phases for "up" else 1). x [N or 1, H, W, CIN] (stride
    x_stride_n between samples, 0 to broadcast one); mean, scale, shift [N, CIN] fp32; w [phases, taps, CIN, COUT];
    noise [N or 1, HOUT, WOUT]; out [N, HOUT, WOUT, COUT]; partials [N, COUT, phases * SLOTS, 3], zeroed.
    TAPS_W x TAPS_W taps a phase and STRIDE follow from MODE (the launcher's GEOMETRY).
    HO x WO is the grid a phase computes (the output's size, or the input's for "up"); ONE_SAMPLE_TILES: HO * WO
    is a multiple of BLOCK_M, so a tile lies in one sample and reads its modulation as a row, not a gather."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    TAPS: tl.constexpr = TAPS_W * TAPS_W
    if MODE == 1:
        py = phase // 2
        px = phase % 2
    else:
        py = 0
        px = 0
    hwo = HO * WO
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    n_row = offs_m // hwo
    r = offs_m % hwo
    oh = r // WO
    ow = r % WO
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < COUT
    x_rows = x_ptr + n_row.to(tl.int64) * x_stride_n  # [BLOCK_M] pointers to each row's sample
    if ONE_SAMPLE_TILES:
        n_tile = (pid_m * BLOCK_M) // hwo
    w_phase = w_ptr + phase * (TAPS * CIN * COUT)
    k_blocks = tl.cdiv(CIN, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, TAPS * k_blocks):
        tap = step // k_blocks
        k0 = (step % k_blocks) * BLOCK_K
        ty = tap // TAPS_W
        tx = tap % TAPS_W
        if MODE == 1:
            ih = oh + py - ty
            iw = ow + px - tx
        else:
            ih = oh * STRIDE + ty - 1
            iw = ow * STRIDE + tx - 1
        inside = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < CIN
        valid = inside[:, None] & mask_k[None, :]
        a_ptrs = x_rows[:, None] + ((ih * W + iw) * CIN)[:, None] + offs_k[None, :]
        a = tl.load(a_ptrs, mask=valid, other=0.0)
        if HAS_MOD:
            if ONE_SAMPLE_TILES:
                mu = tl.load(mean_ptr + n_tile * CIN + offs_k, mask=mask_k, other=0.0)[None, :]
                sc = tl.load(scale_ptr + n_tile * CIN + offs_k, mask=mask_k, other=0.0)[None, :]
                sh = tl.load(shift_ptr + n_tile * CIN + offs_k, mask=mask_k, other=0.0)[None, :]
            else:
                mod = n_row[:, None] * CIN + offs_k[None, :]
                mu = tl.load(mean_ptr + mod, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
                sc = tl.load(scale_ptr + mod, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
                sh = tl.load(shift_ptr + mod, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            # The padding lies outside the modulated map: zero after the affine map, not before. The mean is
            # taken off first, not folded into the shift: a mean large against the spread would cancel.
            a = tl.where(valid, (a.to(tl.float32) - mu) * sc + sh, 0.0)
        b_ptrs = w_phase + tap * (CIN * COUT) + offs_k[:, None] * COUT + offs_n[None, :]
        b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if DOT_FP32:  # Triton's interpreter has no bf16 matmul: the (exact) products are taken in fp32
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=INPUT_PRECISION)
        else:
            acc += tl.dot(a.to(b.dtype), b, input_precision=INPUT_PRECISION)

    # Where each row lands in the output (the "up" phases interleave on the 2x grid).
    if MODE == 1:
        ho_out = 2 * HO
        wo_out = 2 * WO
        pix = (2 * oh + py) * wo_out + (2 * ow + px)
    else:
        ho_out = HO
        wo_out = WO
        pix = oh * wo_out + ow
    if HAS_NOISE:
        nw = tl.load(nw_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        nz = tl.load(noise_ptr + n_row.to(tl.int64) * noise_stride_n + pix, mask=mask_m, other=0.0).to(tl.float32)
        acc += nz[:, None] * nw[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if ACT:
        acc = leaky_relu(acc, SLOPE)
    out_rows = (n_row.to(tl.int64) * (ho_out * wo_out) + pix) * COUT
    tl.store(out_ptr + out_rows[:, None] + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])
    if STATS:
        store_sample_stats(part_ptr, acc, n_row, mask_m, offs_n, mask_n, pid_m * BLOCK_M, M, hwo, COUT,
                           phase * SLOTS, SLOTS * tl.num_programs(2), BLOCK_M)


def configs() -> list[triton.Config]:
    """The autotune list, sized for Hopper (232,448 B of shared memory a block; wgmma wants 4-warp groups and
    64-row multiples): benchmarks/conv_aot.py compiles each for sm_90 and reports its shared memory,
    registers and spills. prune() drops those wider than a layer."""
    out = []
    for bm, bn, bk, warps, stages in (
        (128, 128, 64, 8, 3), (128, 128, 32, 4, 4), (256, 64, 32, 8, 3), (128, 64, 64, 4, 4),
        (128, 64, 32, 4, 4), (64, 128, 64, 4, 3), (64, 64, 64, 4, 4),
        (128, 32, 32, 4, 4), (256, 32, 32, 8, 3), (128, 16, 16, 4, 4), (256, 16, 16, 8, 3), (64, 16, 16, 4, 4),
    ):
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages))
    return out


# A tile that spans samples gathers its modulation as [BLOCK_M, BLOCK_K] fp32 tiles, and the software pipeline
# buffers those in shared memory too: built for sm_90 (benchmarks/conv_aot.py, batch 32), such tiles asked for
# 243,712-385,024 B where BLOCK_M * BLOCK_K * stages >= 24,576 (over the 232,448 a block may have), and at most
# 212,992 B where it was 16,384.
SPANNING_STAGE_ELEMENTS = 16_384


def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The configs no wider than the layer: BLOCK_N = COUT at <= 32 channels, BLOCK_K <= CIN, BLOCK_M <= M (a
    4x4 layer at batch 1 is 16 rows), and, where a tile spans samples (HO * WO not a multiple of BLOCK_M), the
    pipelined modulation gathers within shared memory; the narrowest survive where none fits."""
    def fits(c: triton.Config) -> bool:
        kw = c.kwargs
        plane = named_args.get("HO", 0) * named_args.get("WO", 0)
        spans = plane > 0 and plane % kw["BLOCK_M"] != 0
        return (kw["BLOCK_N"] <= max(16, _pow2(named_args["COUT"]))
                and kw["BLOCK_K"] <= max(16, _pow2(named_args["CIN"]))
                and kw["BLOCK_M"] <= max(64, _pow2(named_args["M"]))
                and (not spans or kw["BLOCK_M"] * kw["BLOCK_K"] * c.num_stages <= SPANNING_STAGE_ELEMENTS))
    kept = [c for c in configs if fits(c)]
    return kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.kwargs["BLOCK_M"]))]


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _one_sample_tiles(args: dict) -> bool:
    return (args["HO"] * args["WO"]) % args["BLOCK_M"] == 0


# A given tile (the interpreter, fp32, the benchmarks' forced configs), and the autotuned kernel (fp16/bf16 on a
# GPU; tuned once per layer shape and batch, before a CUDA graph captures it). The partials are zeroed before
# each trial: configs of other BLOCK_M fill other slots.
modulated_conv_fixed = triton.heuristics({"ONE_SAMPLE_TILES": _one_sample_tiles})(modulated_conv_kernel)
modulated_conv_tuned = triton.autotune(
    configs=configs(), key=["M", "CIN", "COUT", "HO", "WO", "MODE", "HAS_MOD", "STATS"],
    prune_configs_by={"early_config_prune": prune}, reset_to_zero=["part_ptr"],
)(modulated_conv_fixed)
