"""modulated_conv: the NHWC implicit-GEMM convolution ("same" 3x3, "up" transposed 4x4, "down" strided 4x4) with
modulation on load and the noise/bias/leaky_relu/statistics epilogue - Triton against torch."""

import pytest
import torch
from _shapes import TOL, grid, max_err, rand

from alae_rt.kernels import modulated_conv, modulated_conv_ref, pack_modulated_conv

# (batch, in channels, out channels, height, width) of the input. 4x4 at batch 3: one 64-row tile holds three
# samples; 8x8 at batch 2: one sample a tile (the modulation read as a row); 7x9 / 3x5: odd, tiles straddle samples.
CASES = [(3, 5, 7, 4, 4), (2, 17, 20, 8, 8), (2, 3, 5, 7, 9)]
MODES = ["same", "up", "down"]


def _out_hw(mode, h, w):
    return {"same": (h, w), "up": (2 * h, 2 * w), "down": ((h - 2) // 2 + 1, (w - 2) // 2 + 1)}[mode]


def _inputs(mode, n, cin, cout, h, w, dtype, noise_batch=1, x_batch=None):
    x = rand(x_batch or n, cin, h, w, dtype=dtype)
    # A shift of order 1 makes a padding zeroed before the modulation (instead of after) show at every border.
    mean, scale, shift = rand(n, cin, seed=1), rand(n, cin, seed=2, scale=0.5), rand(n, cin, seed=3)
    k = 3 if mode == "same" else 4
    wshape = (cin, cout, k, k) if mode == "up" else (cout, cin, k, k)
    weight = rand(*wshape, dtype=dtype, seed=4, scale=(2 / (k * k * cin)) ** 0.5)
    ho, wo = _out_hw(mode, h, w)
    noise = rand(noise_batch, 1, ho, wo, dtype=dtype, seed=5) if noise_batch else None
    return x, weight, mean, scale, shift, noise, rand(cout, dtype=dtype, seed=6), rand(cout, dtype=dtype, seed=7)


def _check(out, m, v, ref, m_ref, v_ref, dtype):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    s = max(1.0, ref.abs().max().item())
    assert max_err(out, ref) <= TOL[dtype] * s
    if m_ref is not None:
        assert m.shape == v.shape == m_ref.shape
        assert max_err(m, m_ref) <= TOL[dtype] * s and max_err(v, v_ref) <= TOL[dtype] * s ** 2


@pytest.mark.parametrize("case, dtype, mode", grid({"shape": CASES, "mode": MODES},
                                                   {"shape": CASES[:2], "mode": MODES}))
def test_matches_reference(case, dtype, mode):
    n, cin, cout, h, w = case
    x, weight, mean, scale, shift, noise, nw, b = _inputs(mode, n, cin, cout, h, w, dtype, noise_batch=n)
    ref, m_ref, v_ref = modulated_conv_ref(x, weight, mean, scale, shift, mode, noise, nw, b)
    _check(*modulated_conv(x, weight, mean, scale, shift, mode, noise, nw, b, impl="triton"), ref, m_ref, v_ref, dtype)


@pytest.mark.parametrize("mode", MODES)
def test_nine_border_cases(mode):
    """An output of 3x3 positions is the nine border cases (four corners, four edges, the inside), each checked
    on its own: the modulated map is zero-padded after its shift."""
    h = {"same": 3, "up": 2, "down": 6}[mode]  # "up": a 2x2 input gives a 4x4 output, its every phase at a border
    x, weight, mean, scale, shift, noise, nw, b = _inputs(mode, 2, 3, 4, h, h, torch.float32)
    ref, _, _ = modulated_conv_ref(x, weight, mean, scale, shift, mode, noise, nw, b)
    out, _, _ = modulated_conv(x, weight, mean, scale, shift, mode, noise, nw, b, impl="triton")
    errs = (out - ref).abs().amax(dim=(0, 1))  # [HO, WO]
    assert errs.shape[0] >= 3 and (errs <= TOL[torch.float32] * max(1.0, ref.abs().max().item())).all(), errs


@pytest.mark.parametrize("block_m", [16, 64])
def test_statistics_merge_across_tiles_and_samples(block_m):
    """5x5 maps at batch 3: 16-row tiles straddle sample boundaries mid-tile and a sample spans up to three
    tiles; a 64-row tile holds parts of three samples. Every segment's partial lands in its own slot."""
    x, weight, mean, scale, shift, noise, nw, b = _inputs("same", 3, 4, 6, 5, 5, torch.float32, noise_batch=1)
    ref, m_ref, v_ref = modulated_conv_ref(x, weight, mean, scale, shift, "same", noise, nw, b)
    got = modulated_conv(x, weight, mean, scale, shift, "same", noise, nw, b, impl="triton",
                         config={"BLOCK_M": block_m, "BLOCK_N": 16, "BLOCK_K": 16})
    _check(*got, ref, m_ref, v_ref, torch.float32)


def test_one_input_sample_broadcast_no_modulation_no_epilogue():
    """The generator's first convolution reads the batch-1 constant for N samples; an input taken as it is (no
    scale), and the up-sampling layers' bare convolution (no act, no statistics: the blur comes first)."""
    x, weight, mean, scale, shift, noise, nw, b = _inputs("same", 3, 5, 6, 4, 4, torch.float32, x_batch=1)
    ref, m_ref, v_ref = modulated_conv_ref(x, weight, mean, scale, shift, "same", noise, nw, b)
    _check(*modulated_conv(x, weight, mean, scale, shift, "same", noise, nw, b, impl="triton"), ref, m_ref, v_ref,
           torch.float32)
    x, weight, *_ = _inputs("up", 2, 5, 6, 3, 4, torch.float32)
    ref, _, _ = modulated_conv_ref(x, weight, mode="up", act=False, stats=False)
    out, m, v = modulated_conv(x, weight, mode="up", act=False, stats=False,
                               packed=pack_modulated_conv(weight, "up"), impl="triton")
    assert m is None and v is None
    _check(out, None, None, ref, None, None, torch.float32)


def test_bad_mode_is_named():
    x, weight, *_ = _inputs("same", 1, 1, 1, 3, 3, torch.float32)
    with pytest.raises(ValueError, match="mode must be one of same, up, down"):
        modulated_conv(x, weight, mode="sideways", impl="torch")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
def test_full_size_on_cuda(dtype, mode):
    """Autotuned tiles at ffhq-1024 layer shapes: 512 channels at 8x8 (tiles over four samples) and 32 at 256."""
    for n, cin, cout, h in ((8, 512, 512, 8), (2, 32, 32, 256)):
        args = [a.cuda() if a is not None else None for a in _inputs(mode, n, cin, cout, h, h, dtype, noise_batch=n)]
        ref, m_ref, v_ref = modulated_conv_ref(*args[:5], mode, *args[5:])
        _check(*modulated_conv(*args[:5], mode, *args[5:], impl="triton"), ref, m_ref, v_ref, dtype)


def test_autotune_list_pruned_to_the_layer():
    """prune(): no tile wider than the layer (BLOCK_N = Cout at 16 channels), none whose pipelined modulation
    gathers overflow sm_90's shared memory where tiles span samples (a 4x4 layer), never an empty list."""
    pytest.importorskip("triton")
    from alae_rt.kernels._modulated_conv_triton import SPANNING_STAGE_ELEMENTS, configs, prune

    narrow = prune(configs(), {"M": 32 * 1024 * 1024, "CIN": 16, "COUT": 16, "HO": 1024, "WO": 1024})
    assert narrow and {c.kwargs["BLOCK_N"] for c in narrow} == {16} and {c.kwargs["BLOCK_K"] for c in narrow} == {16}
    wide = prune(configs(), {"M": 32 * 16, "CIN": 512, "COUT": 512, "HO": 4, "WO": 4})
    assert wide and all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_K"] * c.num_stages <= SPANNING_STAGE_ELEMENTS
                        for c in wide)
    assert len(prune(configs(), {"M": 32 * 32 * 32, "CIN": 512, "COUT": 512, "HO": 32, "WO": 32})) > len(wide)
    assert prune(configs(), {"M": 1, "CIN": 1, "COUT": 1, "HO": 1, "WO": 1})
