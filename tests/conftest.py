"""Shared test fixtures: paths into ../shared, loaded official fixtures, and the gpu / slow markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
