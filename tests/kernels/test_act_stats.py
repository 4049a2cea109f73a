"""act_stats: [blur | 2x2 pool] + noise + bias + leaky_relu with the map's statistics - the epilogue that the
backend runs after the up- and down-sampling convolutions - Triton against torch."""

import pytest
import torch
from _shapes import BIG, DTYPES, SHAPES, TOL, max_err, rand

from alae_rt.kernels import act_stats, act_stats_ref


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [BIG], ids=str)
@pytest.mark.parametrize("pre", ["none", "blur", "pool"])
@pytest.mark.parametrize("noise_batch", ["one", "n", "none"])
def test_matches_reference(shape, dtype, pre, noise_batch):
    n, c, h, w = shape
    y = rand(n, c, 2 * h if pre == "pool" else h, 2 * w if pre == "pool" else w, dtype=dtype)
    nb = {"one": 1, "n": n, "none": 0}[noise_batch]
    noise = rand(nb, 1, h, w, dtype=dtype, seed=1) if nb else None
    nw, b = rand(c, dtype=dtype, seed=2), rand(c, dtype=dtype, seed=3)
    t_ref, m_ref, v_ref = act_stats_ref(y.float(), None if noise is None else noise.float(), nw.float(), b.float(),
                                        pre=pre)
    t, m, v = act_stats(y, noise, nw, b, pre=pre, impl="triton")
    assert t.dtype == dtype and t.shape == (n, c, h, w) and m.shape == v.shape == (n, c)
    scale = max(1.0, t_ref.abs().max().item())
    assert max_err(t, t_ref) <= TOL[dtype] * scale
    # statistics are fp32 of the fp32 activation, whatever the storage dtype
    assert max_err(m, m_ref) <= TOL[torch.float32] * scale and max_err(v, v_ref) <= TOL[torch.float32] * scale ** 2


def test_batch_one_input_broadcasts():
    y, noise = rand(1, 3, 4, 4), rand(3, 1, 4, 4, seed=1)
    nw, b = rand(3, seed=2), rand(3, seed=3)
    t, m, v = act_stats(y, noise, nw, b, batch=3, impl="triton")
    t_ref, m_ref, v_ref = act_stats_ref(y, noise, nw, b, batch=3)
    assert t.shape == (3, 3, 4, 4) and max(max_err(t, t_ref), max_err(m, m_ref), max_err(v, v_ref)) <= 1e-5
