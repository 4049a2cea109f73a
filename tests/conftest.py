"""Shared test fixtures: paths into ../shared, loaded official fixtures, and the gpu / slow markers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Without a GPU the Triton kernels run through Triton's interpreter (decided when a kernel is defined, so
# before any test imports one).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OFFICIAL = SHARED / "fixtures" / "official"
FACES128 = SHARED / "data" / "faces128"
FACES1024 = SHARED / "data" / "faces1024"
DIRECTIONS = SHARED / "data" / "principal_directions"
FIXTURE_NAMES = ("rgb128", "gray32")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


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


@pytest.fixture(scope="session", params=FIXTURE_NAMES)
def fixture_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def official(fixture_name):
    """(folder, reference dict) of one official fixture."""
    folder = require(OFFICIAL / fixture_name)
    return folder, torch.load(folder / "reference.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def rgb128_checkpoint() -> Path:
    return require(OFFICIAL / "rgb128" / "checkpoint.pth")


@pytest.fixture(scope="session")
def rt128(rgb128_checkpoint):
    from alae_rt import Runtime

    return Runtime.load(rgb128_checkpoint)


@pytest.fixture(scope="session")
def faces128() -> Path:
    return require(FACES128)


# ---- the training tests ---------------------------------------------------------------------------------------
TRAINING_TESTS = Path(__file__).resolve().parent / "training"


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
def one_thread_for_training(request):
    """Tiny training models: one thread is faster than two, and does not spin against other jobs on the cores."""
    if TRAINING_TESTS not in Path(request.node.path).parents:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
