"""Fixtures of the training tests: small image folders of mixed sizes and formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


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


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_images(tmp_path / "images", 12)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster than two, and does not spin against other jobs on the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
