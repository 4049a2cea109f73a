"""Held-out evaluation: SSIM and PCA against hand-computed cases, and `alae-rt eval` on real faces."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import FACES128, require

from alae_rt.cli import main
from alae_rt.evaluation import SSIM_K1, load_split, pca_reconstruct, psnr_db, ssim


def test_ssim_of_flat_images_by_hand():
    # No variance: SSIM reduces to its luminance term (2 p q + c1) / (p^2 + q^2 + c1).
    a = np.full((1, 16, 16, 3), 100, np.uint8)
    b = np.full((1, 16, 16, 3), 140, np.uint8)
    c1 = (SSIM_K1 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 140 + c1) / (100**2 + 140**2 + c1), rel=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_is_symmetric_and_falls_with_noise():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    noisy = np.clip(x + rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(x + rng.normal(0, 60, x.shape), 0, 255).astype(np.uint8)
    assert ssim(x, noisy) == pytest.approx(ssim(noisy, x))
    assert 1.0 > ssim(x, noisy) > ssim(x, noisier)


def test_pca_spans_the_training_set_and_zero_components_is_the_mean():
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    # With every component a training image is its own reconstruction (up to rounding).
    assert np.abs(pca_reconstruct(train, train, 5).astype(int) - train).max() <= 1
    mean = pca_reconstruct(train, train[:2], 0)
    assert np.array_equal(mean[0], mean[1])
    assert np.abs(mean[0].astype(float) - train.mean(0)).max() <= 0.5
    # Mirror images double the set: a mirrored training image is reconstructed too.
    assert np.abs(pca_reconstruct(train, train[:, :, ::-1], 11, mirror=True).astype(int)
                  - train[:, :, ::-1]).max() <= 1
    assert psnr_db(train, train) == 100.0


def test_eval_command_reports_the_model_beside_the_baselines(tmp_path, capsys):
    faces = require(FACES128)
    assert main(["-q", "eval", "--faces", str(faces), "--holdout", "11", "--pca", "8,64", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PCA, 64 components" in out and "mean training face" in out
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["heldout_files"][0] == "00099.png" and result["train_images"] == 99
    names = [b["name"] for b in result["baselines"]]
    assert names[0].startswith("mean training face") and "mirror" in names[-1]
    split = load_split(faces, 64, 3, 11)
    rec = pca_reconstruct(split.train, split.held, 64)
    pca64 = next(b for b in result["baselines"] if b["name"] == "PCA, 64 components")
    assert pca64["psnr_db"] == pytest.approx(psnr_db(split.held, rec))
    # The baselines order as they must: more components, better; the mean face worst.
    scores = [b["psnr_db"] for b in result["baselines"]]
    assert scores[0] < scores[1] < scores[2]
    assert 10 < result["model"]["psnr_db"] < 60 and 0 < result["model"]["ssim"] <= 1
    assert (tmp_path / "reconstructions.png").stat().st_size > 0 and (tmp_path / "eval.md").exists()


def test_eval_bad_input(tmp_path, capsys):
    assert main(["eval", "--faces", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    faces = require(FACES128)
    assert main(["eval", "--faces", str(faces), "--holdout", "500"]) == 2
    assert "--holdout 500" in capsys.readouterr().err
