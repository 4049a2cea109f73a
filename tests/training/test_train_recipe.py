"""The small-data recipe: the official step multipliers, augmentation, DiffAugment, the pixel term, F in step III
and encoder refinement - each against what it must do, on hand-made inputs or a tiny run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alae_rt import ModelConfig, StyleALAE, load_checkpoint
from alae_rt.cli import main
from alae_rt.training.alae import ALAESteps
from alae_rt.training.augment import augment_reals, diff_augment
from alae_rt.training.config import TrainConfig
from alae_rt.training.losses import pixel_loss
from alae_rt.training.optim import HEAD_LRMUL, MAPPING_LRMUL, lr_multipliers

TINY = ["--preset", "tiny", "--lod-images", "16", "--lod-batch", "4", "--threads", "1", "--every", "100"]


def train(*args: str) -> int:
    return main(["-q", "train", *args])


def test_step_multipliers_are_the_official_ones():
    # The official MappingF and MappingD both build their layers with lrmul=0.1 (ALAE's net.py).
    assert (MAPPING_LRMUL, HEAD_LRMUL) == (0.1, 0.1)
    assert TrainConfig().mapping_lrmul == MAPPING_LRMUL
    model = StyleALAE(ModelConfig.preset("tiny"))
    d = model.config.latent_size
    assert lr_multipliers(model)["mapping.layers.1.bias"] == 0.1
    assert lr_multipliers(model, 0.01)["mapping.layers.1.weight"] == pytest.approx((2 / d) ** 0.5 * 0.01)


def test_runs_saved_before_the_field_keep_their_multiplier():
    saved = json.loads(TrainConfig().to_json())
    del saved["mapping_lrmul"], saved["augment"], saved["diffaug"], saved["pixel_recon"], saved["ae_updates_mapping"]
    cfg = TrainConfig.from_json(json.dumps(saved))
    assert cfg.mapping_lrmul == 0.01 and cfg.augment == () and cfg.pixel_recon == 0.0


def test_pixel_loss_by_hand():
    rec = torch.tensor([[0.5, -0.5], [1.0, 0.0]]).view(1, 1, 2, 2)
    x = torch.tensor([[0.0, -0.5], [0.0, 0.5]]).view(1, 1, 2, 2)
    assert pixel_loss(rec, x).item() == pytest.approx((0.25 + 0 + 1 + 0.25) / 4)


def ramp(n: int = 2, c: int = 3, r: int = 16) -> torch.Tensor:
    x = torch.linspace(-0.8, 0.8, r)
    return (x[None, None, None, :] + 0.1 * x[None, None, :, None]).expand(n, c, r, r).clone()


def test_augment_reals_keeps_faces_in_range_and_is_seeded():
    x = ramp()
    assert augment_reals(x, (), torch.Generator().manual_seed(0)) is x
    a = augment_reals(x, ("shift", "scale", "color"), torch.Generator().manual_seed(3))
    b = augment_reals(x, ("shift", "scale", "color"), torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.abs().max() <= 1.0 and not torch.equal(a, x)
    # Mild: a small change, not a new image (a 16-px ramp moved by at most 4% and zoomed by 6%).
    assert (a - x).abs().mean() < 0.25
    shifted = augment_reals(x, ("shift",), torch.Generator().manual_seed(5))
    assert torch.allclose(shifted.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.1)


def test_diff_augment_translation_and_cutout_by_hand():
    x = torch.arange(64.0).view(1, 1, 8, 8) + 1.0  # no zeros, so zero padding is visible
    gen = torch.Generator().manual_seed(0)
    t = diff_augment(x, ("translation",), gen)
    # an integer shift (dy, dx) with |d| <= 1 (1/8 of 8): every non-zero pixel is x at the shifted place
    found = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
             if torch.equal(t, torch.roll(x, (dy, dx), (2, 3)) * _inside(8, dy, dx))]
    assert len(found) == 1
    c = diff_augment(x, ("cutout",), torch.Generator().manual_seed(1))
    zeros = (c == 0).sum().item()
    assert 0 < zeros <= 16 and torch.equal(c[c != 0], x[c != 0])  # at most a 4x4 square, the rest untouched


def _inside(r: int, dy: int, dx: int) -> torch.Tensor:
    ys, xs = torch.arange(r)[:, None] - dy, torch.arange(r)[None, :] - dx
    return ((ys >= 0) & (ys < r) & (xs >= 0) & (xs < r)).float()


def test_diff_augment_is_differentiable():
    x = ramp().requires_grad_(True)
    diff_augment(x, ("color", "translation", "cutout"), torch.Generator().manual_seed(2)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("updates", [False, True])
def test_step_three_trains_the_mapping_only_when_asked(updates):
    torch.manual_seed(0)
    model = StyleALAE(ModelConfig.preset("tiny"))
    steps = ALAESteps(model, TrainConfig(ae_updates_mapping=updates, pixel_recon=0.5))
    reals = ramp(4, 3, 16)
    latent, pixel = steps("ae", reals, 2, 1.0, torch.Generator().manual_seed(0))
    assert pixel.item() > 0
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    grads = torch.autograd.grad(pixel, enc, retain_graph=True, allow_unused=True)
    assert sum(g.abs().sum() for g in grads if g is not None) > 0  # the pixel term trains E
    (latent + pixel).backward()
    assert (model.mapping.layers[0].weight.grad is not None) == updates


def test_recipe_options_train_and_are_stored(image_folder, tmp_path):
    run = tmp_path / "run"
    assert train("--data", str(image_folder), "-o", str(run), "--steps", "14", "--augment", "all",
                 "--diffaug", "color,translation", "--pixel-recon", "2", "--ae-updates-mapping", *TINY) == 0
    meta = load_checkpoint(run / "checkpoint.safetensors").metadata
    cfg = meta["train_config"]
    assert cfg["augment"] == ["shift", "scale", "color"] and cfg["diffaug"] == ["color", "translation"]
    assert cfg["pixel_recon"] == 2.0 and cfg["ae_updates_mapping"] is True
    history = load_file(run / "train_state.safetensors")["history"]
    assert (history[:, 7] > 0).all()  # the weighted pixel term was logged every step


def test_encoder_refinement_trains_only_the_encoder_and_resumes_exactly(image_folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        assert train("--data", str(image_folder), "-o", str(run), "--steps", "14", *TINY) == 0
    before = load_file(a / "checkpoint.safetensors")
    assert train("--resume", str(a), "--refine-encoder", "--refine-steps", "6", *TINY) == 0
    assert train("--resume", str(b), "--refine-encoder", "--refine-steps", "2", *TINY) == 0
    assert train("--resume", str(b), "--refine-encoder", "--refine-steps", "6", *TINY) == 0
    after = load_file(a / "checkpoint.safetensors")
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"encoder"}
    assert all(torch.equal(after[k], load_file(b / "checkpoint.safetensors")[k]) for k in after)
    meta = load_checkpoint(a / "checkpoint.safetensors").metadata
    assert meta["encoder_refinement"]["steps"] == 6


def test_refinement_refusals(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert train("--data", str(image_folder), "-o", str(run), "--steps", "3", *TINY) == 0
    assert train("--resume", str(run), "--refine-encoder", *TINY) == 2  # still at 4x4
    assert "still growing" in capsys.readouterr().err
    assert train("--data", str(image_folder), "-o", str(tmp_path / "x"), "--refine-encoder", *TINY) == 2
    assert "--resume" in capsys.readouterr().err
    assert train("--resume", str(run), "--steps", "14", *TINY) == 0
    assert train("--resume", str(run), "--refine-encoder", "--refine-steps", "1", *TINY) == 0
    assert train("--resume", str(run), "--steps", "20", *TINY) == 2  # training after refinement would undo it
    assert "refined" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--augment", "rotate"], "augment: unknown rotate"),
    (["--diffaug", "color,blur"], "diffaug: unknown blur"),
    (["--pixel-recon", "-1"], "pixel_recon must be >= 0"),
    (["--mapping-lrmul", "0"], "mapping_lrmul must be a positive number"),
])
def test_bad_recipe_options(image_folder, tmp_path, capsys, args, message):
    assert train("--data", str(image_folder), "-o", str(tmp_path / "r"), "--steps", "1", *args, *TINY) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
