"""`alae-rt train --method introvae|lia` (and `alae-rt digits --method`) on the tiny config: each method trains
the parts it should, LIA switches stage with G frozen at the served weights, runs resume exactly (across LIA's stage
switch too), checkpoints name their method, and bad methods or hyper-parameters are one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error
from safetensors.torch import load_file

from alae_rt import ModelConfig, Runtime, load_checkpoint
from alae_rt.cli import main
from alae_rt.methods import MethodConfig
from alae_rt.training.config import TrainConfig
from alae_rt.training.data import ImageSet, load_image_folder
from alae_rt.training.mlp import LOSS_COLUMNS, MLPConfig, evaluate, load_digits_split, train_mlp
from alae_rt.training.trainer import RunInfo, Trainer

TINY = ["--preset", "tiny", "--lod-images", "16", "--lod-batch", "4", "--threads", "1"]
CFG = ModelConfig.preset("tiny")


def trainer(folder, tmp_path, method: str, **train) -> Trainer:
    data = load_image_folder(folder, CFG.resolution, CFG.channels)
    tcfg = TrainConfig(lod_batch=(4,), lod_images=16, **train)
    return Trainer(CFG, tcfg, data, ImageSet(data.images[:0], []), tmp_path / method, RunInfo("x", "test", 0),
                   say=lambda m: None, method=MethodConfig.of(method, CFG))


def changed(before: dict, after: dict, prefix: str) -> bool:
    return any(not torch.equal(after[k], before[k]) for k in after if k.startswith(prefix))


def test_introvae_trains_encoder_and_generator_with_finite_losses(image_folder, tmp_path):
    t = trainer(image_folder, tmp_path, "introvae")
    assert not any(k.startswith(("mapping.", "head.")) for k in t.model.state_dict())
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    for _ in range(3):
        stats = t.train_step()
        assert all(math.isfinite(stats[k]) for k in ("loss_d", "loss_g", "loss_ae", "loss_pix"))
        assert stats["loss_ae"] >= 0 and stats["loss_pix"] > 0  # KL(real) and L_AE
    after = t.model.state_dict()
    assert changed(before, after, "encoder.") and changed(before, after, "generator.blocks.0.")
    assert torch.equal(after["dlatent_avg"], torch.zeros_like(after["dlatent_avg"]))


def test_lia_trains_a_gan_then_only_the_encoder(image_folder, tmp_path):
    t = trainer(image_folder, tmp_path, "lia", lia_gan_steps=3)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    for _ in range(3):
        stats = t.train_step()
        assert stats["loss_ae"] == 0 and stats["loss_pix"] == 0  # stage 1 has no reconstruction
    mid = {k: v.clone() for k, v in t.model.state_dict().items()}
    for part in ("mapping.couplings.", "generator.", "critic.", "head."):
        assert changed(before, mid, part), part
    assert not changed(before, mid, "encoder.")  # E is not part of the GAN
    stage_1_phase = t.phase_of_last_step()
    for _ in range(3):
        stats = t.train_step()
        assert stats["loss_pix"] > 0 and stats["loss_ae"] > 0
    after = t.model.state_dict()
    assert t.stage == 1 and t.phase() == stage_1_phase and t.images_seen == 24
    assert changed(mid, after, "encoder.") and changed(mid, after, "critic.")
    # G and the flow were frozen at the EMA weights (what is served) when stage 2 began, and stay so
    ema = t.ema.state_dict()
    for k in after:
        if k.startswith(("generator.", "mapping.")):
            assert torch.equal(after[k], ema[k]), k


@pytest.mark.parametrize("method,extra", [("introvae", ["--introvae-margin", "4"]),
                                          ("lia", ["--lia-gan-steps", "3", "--flow-depth", "2"])])
def test_resume_equals_uninterrupted_run(image_folder, tmp_path, method, extra):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["-q", "train", "--data", str(image_folder), *TINY, "--method", method, *extra]
    assert main([*common, "--steps", "5", "--every", "5", "-o", str(a)]) == 0
    assert main([*common, "--steps", "2", "--every", "2", "-o", str(b)]) == 0
    assert main(["-q", "train", "--resume", str(b), "--steps", "5", "--every", "5", "--threads", "1"]) == 0
    sa, sb = load_file(str(a / "train_state.safetensors")), load_file(str(b / "train_state.safetensors"))
    for key in sa:
        if key.startswith(("model.", "ema.", "opt.")):
            assert torch.equal(sa[key], sb[key]), key
    ckpt = load_checkpoint(a / "checkpoint.safetensors")
    assert ckpt.method.name == method and ckpt.metadata["method"] == method
    assert ckpt.metadata["description"].startswith({"introvae": "IntroVAE", "lia": "LIA"}[method])
    rt = Runtime.load(a / "checkpoint.safetensors")
    assert rt.method.name == method and rt.encode(torch.zeros(1, 3, 16, 16)).shape == (1, 32)
    if method == "lia":
        assert ckpt.method.flow_depth == 2


@pytest.mark.parametrize("args,needles", [
    (["--method", "vae"], ["unknown method 'vae'"]),
    (["--method", "introvae", "--introvae-margin", "-1"], ["introvae_margin", ">= 0"]),
    (["--method", "introvae", "--introvae-beta", "0"], ["introvae_beta", "positive"]),
    (["--method", "lia", "--flow-depth", "0"], ["flow depth", "[1, 64]", "got 0"]),
    (["--method", "lia", "--lia-gan-steps", "0"], ["lia_gan_steps"]),
    (["--flow-depth", "3"], ["LIA's", "alae"]),
    (["--method", "alae", "--introvae-alpha", "1"], ["--introvae-alpha", "--method introvae"]),
])
def test_bad_methods_and_hyper_parameters_are_one_line_errors(image_folder, tmp_path, capsys, args, needles):
    code = main(["-q", "train", "--data", str(image_folder), *TINY, "--steps", "2", "-o", str(tmp_path / "r"), *args])
    assert_one_line_error(code, capsys.readouterr().err, *needles)
    assert not (tmp_path / "r" / "train_state.safetensors").exists()


def test_resuming_with_another_method_is_a_one_line_error(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(image_folder), *TINY, "--steps", "1", "--method", "introvae",
                 "-o", str(run)]) == 0
    capsys.readouterr()
    code = main(["-q", "train", "--resume", str(run), "--steps", "2", "--method", "alae"])
    assert_one_line_error(code, capsys.readouterr().err, "the run trains introvae", "--method alae")
    code = main(["-q", "train", "--resume", str(run), "--refine-encoder", "--refine-steps", "1"])
    assert_one_line_error(code, capsys.readouterr().err, "refines ALAE runs")


def test_a_state_of_another_method_is_refused_by_the_trainer(image_folder, tmp_path):
    t = trainer(image_folder, tmp_path, "introvae")
    t.out.mkdir(parents=True)
    t.train(1, every=1, progress=False)
    other = trainer(image_folder, tmp_path, "alae")
    with pytest.raises(Exception, match="the run trains introvae"):
        other.load_state(t.out / "train_state.safetensors")


@pytest.mark.parametrize("method", ["introvae", "lia"])
def test_mlp_variants_train_and_are_scored(method):
    cfg = MLPConfig(latent_size=8, hidden=32, batch=32, steps=40, method=method)
    x_tr, y_tr, x_te, y_te = load_digits_split(cfg)
    model, history = train_mlp(x_tr, cfg)
    h = np.asarray(history)
    assert h.shape == (40, 1 + len(LOSS_COLUMNS[method])) and np.isfinite(h).all()
    acc = evaluate(model, x_tr, y_tr, x_te, y_te)
    assert model.encode(x_te).shape == (len(x_te), 8)
    assert all(0 <= v <= 1 for v in acc.values()) and acc["w_1nn"] > 0.2  # chance is 0.1


def test_digits_command_takes_a_method(tmp_path, capsys):
    path = tmp_path / "digits.json"
    assert main(["-q", "digits", "--method", "lia", "--steps", "8", "--hidden", "16", "--batch", "16",
                 "--results", str(path)]) == 0
    record = json.loads(path.read_text())
    assert record["benchmark"] == "digits_mlp_lia" and record["config"]["method"] == "lia"
    assert (tmp_path / "digits.md").read_text().startswith("# MLP LIA on scikit-learn digits")
    capsys.readouterr()
    code = main(["-q", "digits", "--method", "lia", "--flow-depth", "0", "--steps", "2"])
    assert_one_line_error(code, capsys.readouterr().err, "flow depth")
