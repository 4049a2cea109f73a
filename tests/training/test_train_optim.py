"""Learning-rate equalisation: the multiplier table matches the initialisation, and Adam on stored effective
weights equals Adam on the unit-scale weights of the runtime-scaled form."""

from __future__ import annotations

import math

import pytest
import torch

from alae_rt import ModelConfig, StyleALAE
from alae_rt.training.optim import HEAD_LRMUL, MAPPING_LRMUL, LREQAdam, lr_multipliers


def test_multiplier_table():
    cfg = ModelConfig.preset("small-64")
    model = StyleALAE(cfg)
    mult = lr_multipliers(model)
    assert set(mult) == {n for n, _ in model.named_parameters()}
    d = cfg.latent_size
    assert mult["mapping.layers.0.weight"] == pytest.approx(math.sqrt(2 / d) * MAPPING_LRMUL)
    assert mult["mapping.layers.0.bias"] == MAPPING_LRMUL
    assert mult["head.layers.2.weight"] == pytest.approx(math.sqrt(2 / d) * HEAD_LRMUL)
    assert mult["generator.blocks.1.style_2.weight"] == pytest.approx(1 / math.sqrt(d))
    c = cfg.generator_channels
    assert mult["generator.blocks.1.conv_1"] == pytest.approx(math.sqrt(2 / (9 * c[0])))
    assert mult["generator.to_rgb.4.weight"] == pytest.approx(0.03 / math.sqrt(c[4]))
    assert mult["encoder.from_rgb.0.weight"] == pytest.approx(math.sqrt(2 / 3))
    for name in ("generator.const", "generator.blocks.0.noise_weight_1", "generator.blocks.2.bias_2",
                 "encoder.blocks.1.bias_1"):
        assert mult[name] == 1.0


@pytest.mark.parametrize("preset", ["small-64", "faces-128"])
def test_multipliers_are_the_init_std(preset):
    """The stored weights are initialised N(0, std) with std = gain / sqrt(fan_in): the same constant the
    optimiser scales by (divided by lrmul), so both sides agree on every layer, the fused convs included."""
    torch.manual_seed(0)
    model = StyleALAE(ModelConfig.preset(preset))
    mult = lr_multipliers(model)
    lrmul = {"mapping.": MAPPING_LRMUL, "head.": HEAD_LRMUL}
    for name, p in model.named_parameters():
        if p.ndim < 2 or p.numel() < 2000 or name == "generator.const":  # const starts at ones
            continue
        expected = mult[name] / next((v for k, v in lrmul.items() if name.startswith(k)), 1.0)
        assert p.std().item() == pytest.approx(expected, rel=0.08), name


def test_adam_on_effective_weights_equals_runtime_scaled_adam():
    torch.manual_seed(0)
    c = 0.125  # the He constant of a layer: w_eff = c * w_hat
    w_hat = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    w_eff = (c * w_hat).detach().clone().requires_grad_(True)
    x = torch.randn(16, 7, dtype=torch.float64)
    plain = torch.optim.Adam([w_hat], lr=0.01, betas=(0.0, 0.99), eps=1e-12)
    ours = LREQAdam([("w", w_eff)], {"w": c}, lr=0.01, betas=(0.0, 0.99), eps=1e-12)
    for _ in range(5):
        for opt, loss in ((plain, (x @ (c * w_hat).T).tanh().sum()), (ours, (x @ w_eff.T).tanh().sum())):
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert torch.allclose(w_eff, c * w_hat, rtol=1e-9, atol=1e-12)


def test_adam_with_first_moment_matches_torch():
    torch.manual_seed(1)
    a = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    plain = torch.optim.Adam([a], lr=0.05, betas=(0.9, 0.99), eps=1e-12)
    ours = LREQAdam([("b", b)], {"b": 1.0}, lr=0.05, betas=(0.9, 0.99), eps=1e-12)
    for step in range(4):
        for opt, p in ((plain, a), (ours, b)):
            opt.zero_grad()
            (p.sin() * (step + 1)).sum().backward()
            opt.step()
    assert torch.allclose(a, b, rtol=1e-9)
