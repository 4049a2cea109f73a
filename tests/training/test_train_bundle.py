"""Bundling a run as the default model: fp16 EMA weights, a grid, and a card whose PSNR the Runtime reproduces."""

from __future__ import annotations

import re

import torch
from safetensors import safe_open

from alae_rt import Runtime
from alae_rt.cli import main
from alae_rt.evaluation import psnr_db
from alae_rt.training.bundle import bundle


def test_bundle_a_run(image_folder, tmp_path):
    run, out = tmp_path / "run", tmp_path / "models"
    assert main(["-q", "train", "--data", str(image_folder), "--out", str(run), "--preset", "tiny", "--steps", "3",
                 "--lod-images", "8", "--lod-batch", "4"]) == 0
    figures = bundle(run, out, "test machine")
    path = out / "default.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
        meta = f.metadata()
    assert str(tmp_path) not in meta["provenance"].split('"dataset"')[1].split(",")[0]  # no machine path
    card = (out / "MODEL_CARD.md").read_text()
    assert (out / "samples.png").is_file() and "samples.png" in card and "test machine" in card
    stated = float(re.search(r"\*\*([0-9.]+) dB\*\*", card).group(1))
    # Anyone can check the card: the held-out file(s) through the Runtime on the bundled weights.
    held = sorted(image_folder.iterdir())[-1:]
    assert figures["heldout_files"] == [p.name for p in held]
    rt = Runtime.load(path)
    x = rt.prepare_images([str(p) for p in held])
    measured = psnr_db(rt.to_uint8(x), rt.to_uint8(rt.decode(rt.encode(x), noise="const")))
    assert abs(measured - stated) < 0.01
