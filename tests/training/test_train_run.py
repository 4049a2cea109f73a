"""`alae-rt train` on a tiny config: it trains, resumes exactly, stops cleanly on Ctrl-C, writes checkpoints the
Runtime loads, and refuses bad data folders with one-line errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from alae_rt import ModelConfig, Runtime, load_checkpoint
from alae_rt.cli import main
from alae_rt.training.config import TrainConfig
from alae_rt.training.data import BatchSampler, ImageSet, load_image_folder
from alae_rt.training.trainer import RunInfo, Trainer

TINY = ["--preset", "tiny", "--lod-images", "16", "--lod-batch", "4", "--threads", "1", "-q"]


def train(*args: str) -> int:
    # -q belongs before the subcommand
    argv = ["-q", "train", *[a for a in args if a != "-q"]]
    return main(argv)


def test_tiny_trains_with_finite_losses_and_changing_weights(image_folder, tmp_path):
    cfg = ModelConfig.preset("tiny")
    tcfg = TrainConfig(lod_batch=(4,), lod_images=16)
    data = load_image_folder(image_folder, cfg.resolution, cfg.channels)
    trainer = Trainer(cfg, tcfg, data, ImageSet(data.images[:0], []), tmp_path / "run", RunInfo("x", "test", 0),
                      say=lambda m: None)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seen = []
    for _ in range(6):  # 4 px, then the 8 px block fading in
        stats = trainer.train_step()
        assert all(math.isfinite(stats[k]) for k in ("loss_d", "loss_g", "loss_ae"))
        seen.append((stats["lod"], stats["blend"]))
    assert seen[0] == (0, 1.0) and seen[4] == (1, 0.0) and 0 < seen[5][1] < 1
    after = trainer.model.state_dict()
    for net in ("mapping.", "generator.blocks.0.", "generator.blocks.1.", "encoder.blocks.2.", "encoder.blocks.1.",
                "head.", "generator.to_rgb.0", "encoder.from_rgb.2"):
        changed = [k for k in after if k.startswith(net) and not torch.equal(after[k], before[k])]
        assert changed, f"no weight of {net} changed"
    # Blocks above the current LOD are untouched.
    assert torch.equal(after["generator.blocks.2.conv_2"], before["generator.blocks.2.conv_2"])
    assert not torch.equal(after["dlatent_avg"], before["dlatent_avg"])
    ema = trainer.ema.state_dict()
    assert not torch.equal(ema["mapping.layers.0.weight"], after["mapping.layers.0.weight"])
    assert not torch.equal(ema["mapping.layers.0.weight"], before["mapping.layers.0.weight"])


def test_resume_equals_uninterrupted_run(image_folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train("--data", str(image_folder), "--out", str(a), "--steps", "7", "--every", "100", *TINY) == 0
    assert train("--data", str(image_folder), "--out", str(b), "--steps", "3", "--every", "100", *TINY) == 0
    assert train("--out", str(b), "--resume", "--steps", "7", "--every", "100", *TINY) == 0
    sa, sb = load_file(a / "train_state.safetensors"), load_file(b / "train_state.safetensors")
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if k not in ("psnr_history", "history") and not torch.equal(sa[k], sb[k])]
    assert differ == []  # weights, EMA, optimiser moments, RNG streams: bit for bit
    assert torch.equal(sa["history"][:, :-1], sb["history"][:, :-1])  # the losses too (the last column is timing)
    ca, cb = load_file(a / "checkpoint.safetensors"), load_file(b / "checkpoint.safetensors")
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


def test_run_outputs_and_checkpoint_in_runtime(image_folder, tmp_path):
    run = tmp_path / "run"
    assert train("--data", str(image_folder), "--out", str(run), "--steps", "5", "--every", "2", *TINY) == 0
    for name in ("checkpoint.safetensors", "train_state.safetensors", "samples.png", "reconstructions.png",
                 "losses.png", "log.jsonl"):
        assert (run / name).is_file(), name
    ckpt = load_checkpoint(run / "checkpoint.safetensors")
    assert ckpt.metadata["steps"] == 5 and ckpt.metadata["holdout_images"] == 1
    assert ckpt.metadata["command"].startswith("alae-rt train")
    assert ckpt.metadata["heldout_psnr_db"] > 0
    # the 8 training images shown and the 1 held out, each beside its reconstruction: two blocks, each under its
    # title and a "real | recon." label over every column (was one unlabelled grid, 3 rows of 4 pairs)
    grid = np.asarray(Image.open(run / "reconstructions.png").convert("L"))
    line, cell = 14, 64 + 2
    assert grid.shape == (4 * line + 3 * cell + 2, 2 + 8 * cell)
    for y in (0, line, 2 * line + 2 * cell, 3 * line + 2 * cell):
        assert (grid[y:y + line] < 128).any(), y
    rt = Runtime.load(run / "checkpoint.safetensors")
    rec = rt.reconstruct(sorted(image_folder.iterdir())[:2], noise="const")
    assert rec.shape == (2, 3, 16, 16) and torch.isfinite(rec).all()
    assert rt.generate(seeds=[0, 1]).shape == (2, 3, 16, 16)
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert lines and all(math.isfinite(v) for v in lines[-1].values())


def test_existing_run_needs_resume(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert train("--data", str(image_folder), "--out", str(run), "--steps", "1", *TINY) == 0
    capsys.readouterr()
    assert train("--data", str(image_folder), "--out", str(run), "--steps", "2", *TINY) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "file", "empty", "unreadable"])
def test_bad_data_folders(tmp_path, capsys, case):
    data = tmp_path / "data"
    if case == "file":
        data.write_text("not a folder")
    elif case == "empty":
        data.mkdir()
    elif case == "unreadable":
        data.mkdir()
        (data / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        (data / "b.jpg").write_text("text")
    rc = train("--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1", *TINY)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("alae-rt: error: --data") and "Traceback" not in "\n".join(err)
    expected = {"missing": "no such directory", "file": "not a directory", "empty": "is empty",
                "unreadable": "none of its 2 file(s) is a readable image"}[case]
    assert expected in err[-1]


def test_unreadable_files_are_reported_and_skipped(image_folder, tmp_path, capsys):
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    run = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--out", str(run), "--steps", "1",
                 *[a for a in TINY if a != "-q"]]) == 0
    err = capsys.readouterr().err
    assert "skipped unreadable file" in err and "broken.png" in err
    assert "11 training and 1 held-out" in err


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("--data", "--resume", "--steps", "R1", "torchrun", "checkpoint.safetensors"):
        assert word in out


def test_ctrl_c_leaves_a_usable_checkpoint(image_folder, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "alae_rt.training", "--data", str(image_folder), "--out", str(run),
           "--steps", "100000", "--every", "100000", *[a for a in TINY if a != "-q"]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    log = run / "log.jsonl"
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    state = load_file(run / "train_state.safetensors")
    steps = state["history"].shape[0]
    assert steps >= 10
    ckpt = load_checkpoint(run / "checkpoint.safetensors")
    assert ckpt.metadata["steps"] == steps
    Runtime.load(run / "checkpoint.safetensors")
    assert not list(run.glob(".*tmp*"))  # no half-written files left behind
    assert train("--out", str(run), "--resume", "--steps", str(steps + 1), *TINY) == 0


def test_sampler_shards_the_global_batch():
    one = BatchSampler(10, seed=3, flip=True)
    ranks = [BatchSampler(10, seed=3, flip=True) for _ in range(2)]
    for _ in range(7):  # crosses epochs
        idx, flips = one.next(6)
        parts = [s.next(6, rank=r, world=2) for r, s in enumerate(ranks)]
        assert torch.equal(torch.cat([p[0] for p in parts]), idx)
        assert torch.equal(torch.cat([p[1] for p in parts]), flips)
        assert not set(parts[0][0].tolist()) & set(parts[1][0].tolist()) or len(set(idx.tolist())) < 6
