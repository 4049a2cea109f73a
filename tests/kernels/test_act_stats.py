"""act_stats: [blur | 2x2 pool] + noise + bias + leaky_relu with the map's statistics - the epilogue that the
triton backend runs after the up- and down-sampling convolutions - Triton against the torch reference, and
act_stats then modulate against the network's own generator and encoder epilogues."""

import pytest
import torch
from _shapes import BIG, DTYPE_SHAPES, SHAPES, TOL, grid, max_err, rand

from alae_rt.kernels import ENC_NORM_EPS, GEN_NORM_EPS, act_stats, act_stats_ref, modulate
from alae_rt.network import encoder_epilogue, generator_epilogue

PRES = ["none", "blur", "pool"]


def _inputs(n, c, h, w, dtype, pre, noise_batch, x_batch=None):
    y = rand(x_batch or n, c, 2 * h if pre == "pool" else h, 2 * w if pre == "pool" else w, dtype=dtype)
    nb = {"one": 1, "n": n, "none": 0}[noise_batch]
    noise = rand(nb, 1, h, w, dtype=dtype, seed=1) if nb else None
    return y, noise, rand(c, dtype=dtype, seed=2), rand(c, dtype=dtype, seed=3)


@pytest.mark.parametrize("shape, dtype, pre, noise_batch", grid(
    {"shape": SHAPES + [BIG], "pre": PRES, "noise_batch": ["one", "n", "none"]},
    {"shape": DTYPE_SHAPES, "pre": PRES, "noise_batch": ["n"]}))
def test_matches_reference(shape, dtype, pre, noise_batch):
    n, c, h, w = shape
    y, noise, nw, b = _inputs(n, c, h, w, dtype, pre, noise_batch)
    t_ref, m_ref, v_ref = act_stats_ref(y.float(), None if noise is None else noise.float(), nw.float(), b.float(),
                                        pre=pre)
    t, m, v = act_stats(y, noise, nw, b, pre=pre, impl="triton")
    assert t.dtype == dtype and t.shape == (n, c, h, w) and m.shape == v.shape == (n, c)
    assert m.dtype == v.dtype == torch.float32
    scale = max(1.0, t_ref.abs().max().item())
    assert max_err(t, t_ref) <= TOL[dtype] * scale
    # statistics are fp32 of the fp32 activation, whatever the storage dtype
    assert max_err(m, m_ref) <= TOL[torch.float32] * scale and max_err(v, v_ref) <= TOL[torch.float32] * scale ** 2


def test_batch_one_input_broadcasts():
    y, noise, nw, b = _inputs(3, 3, 4, 4, torch.float32, "none", "n", x_batch=1)
    t, m, v = act_stats(y, noise, nw, b, batch=3, impl="triton")
    t_ref, m_ref, v_ref = act_stats_ref(y, noise, nw, b, batch=3)
    assert t.shape == (3, 3, 4, 4) and max(max_err(t, t_ref), max_err(m, m_ref), max_err(v, v_ref)) <= 1e-5


@pytest.mark.parametrize("shape, x_batch, noise_batch", [((3, 5, 4, 4), 1, "one"), ((3, 5, 4, 4), 1, "n"),
                                                         ((2, 3, 9, 7), None, "none"), (BIG, None, "n")], ids=str)
def test_then_modulate_is_the_network_generator_epilogue(shape, x_batch, noise_batch):
    """How the triton backend splits the generator epilogue: act_stats where a map is written, the instance
    norm and AdaIN as modulate's (or the next convolution's) scale and shift where it is read."""
    n, c, h, w = shape
    x, noise, nw, b = _inputs(n, c, h, w, torch.float32, "none", noise_batch, x_batch)
    style = rand(n, 2 * c, seed=4, scale=0.5)
    t, mean, var = act_stats(x, noise, nw, b, batch=n, impl="triton")
    gamma, beta = style.view(n, 2, c).unbind(1)
    out = modulate(t, mean, torch.rsqrt(var + GEN_NORM_EPS) * (1 + gamma), beta, impl="triton")
    ref = generator_epilogue(x, noise, nw, b, style)
    assert out.shape == ref.shape == (n, c, h, w)
    assert max_err(out, ref) <= TOL[torch.float32] * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("shape", [(3, 5, 4, 4), BIG], ids=str)
def test_then_modulate_is_the_network_encoder_epilogue(shape):
    n, c, h, w = shape
    x, b = rand(n, c, h, w), rand(c, seed=1)
    t, mean, var = act_stats(x, bias=b, impl="triton")
    out = modulate(t, mean, torch.rsqrt(var + ENC_NORM_EPS), torch.zeros_like(mean), impl="triton")
    ref, stats_ref = encoder_epilogue(x, b)
    assert max_err(out, ref) <= TOL[torch.float32] * max(1.0, ref.abs().max().item())
    assert max_err(torch.cat((mean, var.sqrt()), dim=1), stats_ref) <= TOL[torch.float32]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
def test_full_size_on_cuda(dtype):
    """The ffhq-1024 generator's last up-sampling epilogue: 16 channels at 1024x1024, batch 4, blur folded in -
    the split reduction at the size it exists for."""
    y, noise, nw, b = (t.cuda() for t in _inputs(4, 16, 1024, 1024, dtype, "blur", "n"))
    t_ref, m_ref, v_ref = act_stats_ref(y.float(), noise.float(), nw.float(), b.float(), pre="blur")
    t, m, v = act_stats(y, noise, nw, b, pre="blur", impl="triton")
    scale = max(1.0, t_ref.abs().max().item())
    assert max_err(t, t_ref) <= TOL[dtype] * scale
    assert max_err(m, m_ref) <= TOL[torch.float32] * scale and max_err(v, v_ref) <= TOL[torch.float32] * scale ** 2
