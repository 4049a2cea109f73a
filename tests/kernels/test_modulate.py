"""modulate: per-(sample, channel) normalise + AdaIN, optionally followed by the blur (zero padding outside the
modulated map) - the input side of the resampling convolutions - Triton against torch."""

import pytest
from _shapes import DTYPES, SHAPES, TOL, max_err, rand

from alae_rt.kernels import modulate, modulate_ref


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(2, 3, 67, 71)], ids=str)
@pytest.mark.parametrize("post", ["none", "blur"])
@pytest.mark.parametrize("t_batch", ["n", "one"])
def test_matches_reference(shape, dtype, post, t_batch):
    n, c, h, w = shape
    t = rand(n if t_batch == "n" else 1, c, h, w, dtype=dtype)
    mean, scale, shift = rand(n, c, seed=1), rand(n, c, seed=2), rand(n, c, seed=3)
    ref = modulate_ref(t.float(), mean, scale, shift, post)
    out = modulate(t, mean, scale, shift, post, impl="triton")
    assert out.dtype == dtype and out.shape == (n, c, h, w)
    assert max_err(out, ref) <= TOL[dtype] * max(1.0, ref.abs().max().item())
