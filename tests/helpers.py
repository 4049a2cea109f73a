"""Helpers the tests import: paths into ../shared, skips for missing data, CLI runners, generated images, and
the check of a Runtime against an official fixture's outputs. Fixtures and hooks stay in conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alae_rt import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout, or a copy of it named by ALAE_RT_SHARED (the GPU kit's: make gpu-kit)
SHARED = Path(os.environ.get("ALAE_RT_SHARED") or ROOT.parent / "shared")
OFFICIAL = SHARED / "fixtures" / "official"
FACES128 = SHARED / "data" / "faces128"
FACES1024 = SHARED / "data" / "faces1024"
DIRECTIONS = SHARED / "data" / "principal_directions"
FIXTURE_NAMES = ("rgb128", "gray32")
TRAINING_TESTS = ROOT / "tests" / "training"

# The ffhq-1024 layout (L = 9: 1024x1024, 18 styles, fused blocks from 128 up, channels that change between blocks)
# with a few channels and a small latent: it runs every 1024 code path at a small fraction of ffhq's cost. Tests
# that want the real preset's size as well run it too, marked slow.
NARROW_1024 = ModelConfig(9, 4, 16, 16, 2, name="narrow-1024")


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing (the shared fixtures/data live beside the project)")
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`alae-rt ARGV` in this process: (exit status, stdout, stderr)."""
    from alae_rt.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """The CLI's contract for bad input: exit status 2, one `alae-rt: error:` line naming the problem."""
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("alae-rt: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def write_images(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` random images of assorted sizes and formats (PNG, JPEG, grey, RGBA) under `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        kind = i % 4
        if kind == 2:
            img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
        elif kind == 3:
            img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
        else:
            # smooth-ish colour fields, so the images are not pure noise
            y, x = np.mgrid[0:h, 0:w]
            base = np.stack([np.sin(x / (3 + i)), np.cos(y / (4 + i)), np.sin((x + y) / 5)], -1)
            img = Image.fromarray(((base * 0.5 + 0.5) * 255).astype(np.uint8), "RGB")
        img.save(folder / f"img{i:03d}.{'jpg' if kind == 1 else 'png'}")
    return folder


PARITY_TOL = {"atol": 1e-4, "rtol": 1e-4}  # the official outputs, fp32


def check_all_outputs(rt, ref: dict) -> None:
    torch.testing.assert_close(rt.encode(ref["x"]), ref["encode_w"], **PARITY_TOL)
    torch.testing.assert_close(rt.discriminate(ref["encode_w"]), ref["encode_d_logit"], **PARITY_TOL)
    torch.testing.assert_close(rt.map(ref["z"]), ref["mapped_w"], **PARITY_TOL)
    torch.testing.assert_close(rt.model.dlatent_avg, ref["dlatent_avg"], **PARITY_TOL)
    reconstructed = rt.decode(ref["encode_w"], noise=ref["reconstruct_noise"])
    torch.testing.assert_close(reconstructed, ref["reconstruct_img"], **PARITY_TOL)
    generated = rt.generate(z=ref["z"], truncation_psi=ref["truncation_psi"],
                            truncation_cutoff=ref["truncation_cutoff"], noise=ref["generate_noise"])
    torch.testing.assert_close(generated, ref["generate_img"], **PARITY_TOL)
    mixed = rt.mix(ref["encode_w"], ref["mapped_w"], ref["mix_cutoff"], noise=ref["mix_noise"])
    torch.testing.assert_close(mixed, ref["mix_img"], **PARITY_TOL)


def find_row(grid: np.ndarray, image: np.ndarray, column: int) -> int | None:
    """The top row of `image` in a grid.png's column `column` (cells of the image's size, 2 pixels apart and from the
    edge), or None."""
    h, w = image.shape[:2]
    x = 2 + column * (w + 2)
    for y in range(grid.shape[0] - h + 1):
        if np.array_equal(grid[y:y + h, x:x + w], image):
            return y
    return None


def has_text(region: np.ndarray) -> bool:
    """Dark pixels on a grid's white paper: a label or a caption was drawn there."""
    return region.size > 0 and int((region.max(axis=-1) < 100).sum()) >= 20
