"""modulated_blur: the blur of a modulated NHWC map (zero padding after the modulation) with the noise/bias/
leaky_relu/statistics epilogue - Triton against torch."""

import pytest
import torch
from _shapes import TOL, grid, max_err, rand

from alae_rt.kernels import modulated_blur, modulated_blur_ref

# (batch, channels, height, width): 4x4 at batch 3 (one tile over all samples), a 1x1 map, odd maps, 20 channels
# (a partial channel tile).
SHAPES = [(3, 5, 4, 4), (1, 3, 1, 1), (2, 20, 7, 9), (3, 17, 3, 5)]


def _inputs(n, c, h, w, dtype, noise_batch):
    x = rand(n, c, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
    mean, scale, shift = rand(n, c, seed=1), rand(n, c, seed=2, scale=0.5), rand(n, c, seed=3)
    noise = rand(noise_batch, 1, h, w, dtype=dtype, seed=5) if noise_batch else None
    return x, mean, scale, shift, noise, rand(c, dtype=dtype, seed=6), rand(c, dtype=dtype, seed=7)


@pytest.mark.parametrize("shape, dtype, epilogue", grid({"shape": SHAPES, "epilogue": ["decode", "encode"]},
                                                        {"shape": SHAPES[2:], "epilogue": ["decode", "encode"]}))
def test_matches_reference(shape, dtype, epilogue):
    """decode: blur + noise (from batch 1) + bias + leaky_relu + statistics; encode: normalise + blur alone."""
    x, mean, scale, shift, noise, nw, b = _inputs(*shape, dtype, noise_batch=1)
    kw = (dict(noise=noise, noise_weight=nw, bias=b, act=True, stats=True) if epilogue == "decode"
          else dict(mean=mean, scale=scale, shift=shift))
    ref, m_ref, v_ref = modulated_blur_ref(x, **kw)
    out, m, v = modulated_blur(x, **kw, impl="triton")
    assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    s = max(1.0, ref.abs().max().item())
    assert max_err(out, ref) <= TOL[dtype] * s
    if epilogue == "decode":
        assert max_err(m, m_ref) <= TOL[dtype] * s and max_err(v, v_ref) <= TOL[dtype] * s ** 2
    else:
        assert m is None and v is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
def test_full_size_on_cuda(dtype):
    """The ffhq-1024 generator's last up-sampling layer: 16 channels at 1024x1024, batch 2."""
    args = [a.cuda() for a in _inputs(2, 16, 1024, 1024, dtype, noise_batch=2)]
    ref, m_ref, v_ref = modulated_blur_ref(*args, act=True, stats=True)
    out, m, v = modulated_blur(*args, act=True, stats=True, impl="triton")
    s = max(1.0, ref.abs().max().item())
    assert max_err(out, ref) <= TOL[dtype] * s and max_err(v, v_ref) <= TOL[dtype] * s ** 2
