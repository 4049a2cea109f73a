"""The MLP ALAE on scikit-learn's digits: it trains with the ALAE steps and its w is scored by 1-NN / linear SVM."""

from __future__ import annotations

import json
import math

import numpy as np

from alae_rt.cli import main
from alae_rt.training.mlp import MLPConfig, evaluate, load_digits_split, train_mlp_alae


def test_mlp_alae_trains_and_w_separates_digits():
    cfg = MLPConfig(latent_size=16, hidden=64, batch=64, steps=150)
    x_tr, y_tr, x_te, y_te = load_digits_split(cfg)
    assert x_tr.shape == (1257, 64) and x_te.shape == (540, 64) and -1 <= x_tr.min() and x_tr.max() <= 1
    model, history = train_mlp_alae(x_tr, cfg)
    h = np.asarray(history)
    assert h.shape == (150, 4) and np.isfinite(h).all()
    assert h[-20:, 3].mean() < 0.5 * h[:20, 3].mean()  # the latent reconstruction is learned
    acc = evaluate(model, x_tr, y_tr, x_te, y_te)
    assert acc["pixels_1nn"] > 0.95  # the protocol itself: 1-NN on raw pixels is near perfect on digits
    assert acc["w_1nn"] > 0.5 and acc["w_linear_svm"] > 0.3  # ten classes: chance is 0.1; collapse gives ~0.1


def test_digits_command_records(tmp_path, capsys):
    path = tmp_path / "digits.json"
    assert main(["-q", "digits", "--steps", "20", "--hidden", "32", "--batch", "32", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1-NN" in out and "linear SVM" in out
    record = json.loads(path.read_text())
    assert set(record["accuracy"]) == {"w_1nn", "w_linear_svm", "pixels_1nn", "pixels_linear_svm"}
    assert all(0 <= v <= 1 for v in record["accuracy"].values())
    assert all(math.isfinite(v) for v in record["final_losses"].values())
    assert (tmp_path / "digits.md").read_text().startswith("# MLP ALAE on scikit-learn digits")
