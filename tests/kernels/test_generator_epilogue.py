"""generator_epilogue: noise + bias + leaky_relu + instance norm + AdaIN, Triton against the torch reference.

Forward only: the kernels serve inference; training runs the torch reference, which autograd differentiates.
"""

import pytest
import torch
from _shapes import BIG, DTYPES, SHAPES, TOL, max_err, rand

from alae_rt.kernels import generator_epilogue, generator_epilogue_ref


def _inputs(n, c, h, w, dtype, noise_batch, x_batch=None, seed=0):
    x = rand(x_batch or n, c, h, w, dtype=dtype, seed=seed)
    noise = None if noise_batch == 0 else rand(noise_batch, 1, h, w, dtype=dtype, seed=seed + 1)
    return x, noise, rand(c, dtype=dtype, seed=seed + 2), rand(c, dtype=dtype, seed=seed + 3), \
        rand(n, 2 * c, dtype=dtype, seed=seed + 4, scale=0.5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [BIG], ids=str)
@pytest.mark.parametrize("noise_batch", ["one", "n", "none"])
def test_matches_reference(shape, dtype, noise_batch):
    n, c, h, w = shape
    nb = {"one": 1, "n": n, "none": 0}[noise_batch]
    x, noise, nw, b, style = _inputs(n, c, h, w, dtype, nb)
    ref = generator_epilogue_ref(*(t.float() if t is not None else None for t in (x, noise, nw, b, style)))
    out = generator_epilogue(x, noise, nw, b, style, impl="triton")
    assert out.dtype == dtype and out.shape == (n, c, h, w)
    if h * w == 1:  # a single value normalises to 0: only beta remains
        assert max_err(out, style[:, c:].view(n, c, 1, 1)) <= TOL[dtype]
    assert max_err(out, ref) <= TOL[dtype] * max(1.0, ref.abs().max().item())


def test_const_input_broadcasts_to_the_style_batch():
    """Block 0 of the generator: `const` has batch 1, noise batch 1 or N, styles batch N."""
    for nb in (1, 3):
        x, noise, nw, b, style = _inputs(3, 5, 4, 4, torch.float32, nb, x_batch=1)
        out = generator_epilogue(x, noise, nw, b, style, impl="triton")
        assert out.shape == (3, 5, 4, 4)
        assert max_err(out, generator_epilogue_ref(x, noise, nw, b, style)) <= TOL[torch.float32]


def test_auto_picks_the_reference_without_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, noise, nw, b, style = _inputs(1, 3, 3, 5, torch.float32, 1)
    if not torch.cuda.is_available():
        torch.testing.assert_close(generator_epilogue(x, noise, nw, b, style),
                                   generator_epilogue_ref(x, noise, nw, b, style), atol=0, rtol=0)
        with pytest.raises(RuntimeError, match="not on CUDA"):
            generator_epilogue(x, noise, nw, b, style, impl="triton")
    with pytest.raises(ValueError, match="impl must be one of"):
        generator_epilogue(x, noise, nw, b, style, impl="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_full_size_on_cuda(dtype):
    """1024x1024 with 16 channels, batch 4: the split reduction at the size it exists for."""
    x, noise, nw, b, style = (t.cuda() for t in _inputs(4, 16, 1024, 1024, dtype, 4))
    ref = generator_epilogue_ref(x.float(), noise.float(), nw.float(), b.float(), style.float())
    assert max_err(generator_epilogue(x, noise, nw, b, style, impl="triton"), ref) <= TOL[dtype] * 4
