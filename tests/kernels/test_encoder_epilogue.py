"""encoder_epilogue: bias + leaky_relu + style statistics (mean, std) + instance norm, Triton against torch."""

import pytest
from _shapes import BIG, DTYPES, SHAPES, TOL, max_err, rand

from alae_rt.kernels import encoder_epilogue, encoder_epilogue_ref


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [BIG], ids=str)
def test_matches_reference(shape, dtype):
    n, c, h, w = shape
    x, b = rand(n, c, h, w, dtype=dtype), rand(c, dtype=dtype, seed=1)
    y_ref, stats_ref = encoder_epilogue_ref(x.float(), b.float())
    y, stats = encoder_epilogue(x, b, impl="triton")
    assert y.dtype == dtype and y.shape == x.shape and stats.shape == (n, 2 * c)
    assert max_err(y, y_ref) <= TOL[dtype] * max(1.0, y_ref.abs().max().item())
    assert max_err(stats, stats_ref) <= TOL[dtype] * max(1.0, stats_ref.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_full_size_on_cuda(dtype):
    x, b = rand(4, 16, 1024, 1024, dtype=dtype).cuda(), rand(16, dtype=dtype, seed=1).cuda()
    y_ref, stats_ref = encoder_epilogue_ref(x.float(), b.float())
    y, stats = encoder_epilogue(x, b, impl="triton")
    assert max_err(y, y_ref) <= TOL[dtype] * 4 and max_err(stats, stats_ref) <= TOL[dtype] * 4
