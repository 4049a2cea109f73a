"""The bundled default model: within 25 MB of fp16, used when no checkpoint is given, and its model card's
held-out PSNR is what the Runtime measures on those held-out faces."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import FACES128, require
from safetensors import safe_open

from alae_rt import Runtime
from alae_rt.cli import main
from alae_rt.runtime import default_checkpoint

MODELS = default_checkpoint().parent if default_checkpoint() else None


def card() -> str:
    return (MODELS / "MODEL_CARD.md").read_text()


def test_bundled_file():
    path = default_checkpoint()
    assert path is not None, "alae_rt/models/default.safetensors is missing"
    assert path.stat().st_size <= 25 * 1024 * 1024
    with safe_open(str(path), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    assert (MODELS / "samples.png").is_file() and "samples.png" in card()


def test_used_when_no_checkpoint_is_given(tmp_path, capsys):
    rt = Runtime.load()
    assert rt.config.resolution >= 64
    assert "default model" in rt.source
    faces = sorted(require(FACES128).iterdir())[:2]
    assert main(["-q", "reconstruct", *map(str, faces), "-o", str(tmp_path / "rec")]) == 0
    assert (tmp_path / "rec" / "grid.png").is_file()
    assert main(["info", "--json"]) == 0
    assert str(rt.config.latent_size) in capsys.readouterr().out


def test_card_psnr_is_reproduced_on_held_out_faces():
    text = card()
    stated = float(re.search(r"held-out reconstruction PSNR \| \*\*([0-9.]+) dB\*\*", text).group(1))
    names = re.search(r"the last \d+ \(([^)]*)\) held out", text).group(1).split(", ")
    held = [require(FACES128 / name) for name in names]
    rt = Runtime.load()
    x = rt.prepare_images([str(p) for p in held])
    rec = rt.decode(rt.encode(x), noise="const")
    a, b = rt.to_uint8(x).astype(np.float64), rt.to_uint8(rec).astype(np.float64)
    measured = np.mean([10 * np.log10(255.0**2 / np.mean((p - q) ** 2)) for p, q in zip(a, b)])
    assert abs(measured - stated) < 0.01


@pytest.mark.slow  # three graphs traced: the export itself is covered by tests/export on other checkpoints
def test_exports_as_is(tmp_path):
    """A checkpoint written by alae-rt train goes to the exporters with no conversion (onnxruntime-verified)."""
    out = tmp_path / "onnx"
    assert main(["-q", "export", "onnx", "-o", str(out)]) == 0
    assert {"encoder.onnx", "generator.onnx", "mapping.onnx", "dlatent_avg.npy"} <= {p.name for p in out.iterdir()}
