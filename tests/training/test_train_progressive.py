"""Progressive growing: the default forward pass is the full-resolution one, and the images and latents are
continuous across a LOD switch (blend 0 at LOD k is LOD k-1 upsampled)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alae_rt import ModelConfig, StyleALAE
from alae_rt.training.config import TrainConfig
from alae_rt.training.data import blend_reals
from alae_rt.training.schedule import phase_at

CFG = ModelConfig.preset("tiny")  # L = 3: LODs 0, 1, 2 at 4, 8, 16 px


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return StyleALAE(CFG).double().eval()


def inputs(n=2):
    gen = torch.Generator().manual_seed(1)
    styles = torch.randn(n, CFG.num_styles, CFG.latent_size, generator=gen, dtype=torch.float64)
    noise = [torch.randn(1 if i == 0 else n, 1, r, r, generator=gen, dtype=torch.float64)
             for i, r in enumerate(r for r in CFG.block_resolutions for _ in (1, 2))]
    return styles, noise


def test_default_path_is_the_last_lod(model):
    styles, noise = inputs()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert torch.equal(model.generator(styles, noise), model.generator(styles, noise, lod=2, blend=1.0))
    assert torch.equal(model.encoder(x), model.encoder(x, lod=2, blend=1.0))


@pytest.mark.parametrize("lod", [1, 2])
def test_generator_continuous_at_switch(model, lod):
    styles, noise = inputs()
    before = model.generator(styles, noise, lod=lod - 1)  # the last step of LOD k-1: [N, C, r/2, r/2]
    at_switch = model.generator(styles, noise, lod=lod, blend=0.0)
    assert at_switch.shape[-1] == 2 * before.shape[-1]
    assert torch.allclose(at_switch, F.interpolate(before, scale_factor=2.0, mode="nearest"), atol=1e-12)
    # ... and it moves smoothly away from there.
    small = model.generator(styles, noise, lod=lod, blend=1e-6)
    assert (small - at_switch).abs().max() < 1e-4


@pytest.mark.parametrize("lod", [1, 2])
def test_encoder_continuous_at_switch(model, lod):
    r = 4 * 2**lod
    x = torch.randn(2, 3, r, r, dtype=torch.float64)
    before = model.encoder(F.avg_pool2d(x, 2, 2), lod=lod - 1)
    # Whatever it is shown at blend 0, the new block adds nothing: only the half-resolution view counts.
    assert torch.allclose(model.encoder(x, lod=lod, blend=0.0), before, atol=1e-10)
    # The reals the trainer shows at blend 0 are that half-resolution view, upsampled.
    assert torch.allclose(model.encoder(blend_reals(x, 0.0), lod=lod, blend=0.0), before, atol=1e-10)
    small = model.encoder(x, lod=lod, blend=1e-6)
    assert (small - before).abs().max() < 1e-3


def test_blend_schedule_is_continuous_and_monotone():
    cfg = TrainConfig(lod_batch=(4,), lod_images=100)
    phases = [phase_at(i, cfg, CFG.layer_count) for i in range(0, 400)]
    assert [p.lod for p in phases[:100]] == [0] * 100 and all(p.blend == 1.0 for p in phases[:100])
    for k in (1, 2):
        start = k * 100
        assert phases[start - 1].lod == k - 1 and phases[start - 1].blend == 1.0
        assert phases[start].lod == k and phases[start].blend == 0.0
        ramp = [p.blend for p in phases[start:start + 50]]
        assert all(b2 > b1 for b1, b2 in zip(ramp, ramp[1:]))
        assert max(b2 - b1 for b1, b2 in zip(ramp, ramp[1:])) < 0.05  # no jumps
        assert phases[start + 50].blend == 1.0
    assert phases[399].lod == 2  # the last LOD runs on


def test_bad_lod_is_refused(model):
    styles, noise = inputs()
    with pytest.raises(ValueError):
        model.generator(styles, noise, lod=0, blend=0.5)
    with pytest.raises(ValueError):
        model.encoder(torch.zeros(1, 3, 32, 32, dtype=torch.float64), lod=3)
