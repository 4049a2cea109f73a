"""modulate: per-(sample, channel) normalise + AdaIN, optionally followed by the blur (zero padding outside the
modulated map) - the input side of the resampling convolutions - Triton against the torch reference."""

import pytest
from _shapes import BIG, DTYPE_SHAPES, SHAPES, TOL, grid, max_err, rand

from alae_rt.kernels import modulate, modulate_ref


@pytest.mark.parametrize("shape, dtype, post, t_batch", grid(
    {"shape": SHAPES + [BIG], "post": ["none", "blur"], "t_batch": ["n", "one"]},
    {"shape": DTYPE_SHAPES, "post": ["none", "blur"], "t_batch": ["n"]}))
def test_matches_reference(shape, dtype, post, t_batch):
    n, c, h, w = shape
    t = rand(n if t_batch == "n" else 1, c, h, w, dtype=dtype)
    mean, scale, shift = rand(n, c, seed=1), rand(n, c, seed=2), rand(n, c, seed=3)
    ref = modulate_ref(t.float(), mean, scale, shift, post)
    out = modulate(t, mean, scale, shift, post, impl="triton")
    assert out.dtype == dtype and out.shape == (n, c, h, w)
    assert max_err(out, ref) <= TOL[dtype] * max(1.0, ref.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
def test_full_size_on_cuda(dtype):
    """The ffhq-1024 encoder's first blur: 16 channels at 1024x1024, batch 4."""
    t = rand(4, 16, 1024, 1024, dtype=dtype).cuda()
    mean, scale, shift = (rand(4, 16, seed=s).cuda() for s in (1, 2, 3))
    ref = modulate_ref(t.float(), mean, scale, shift, "blur")
    out = modulate(t, mean, scale, shift, "blur", impl="triton")
    assert max_err(out, ref) <= TOL[dtype] * max(1.0, ref.abs().max().item())
