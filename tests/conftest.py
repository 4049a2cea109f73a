"""Fixtures and hooks: loaded official fixtures, sample data, the gpu / slow markers (helpers live in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import FACES128, FIXTURE_NAMES, OFFICIAL, TRAINING_TESTS, require, write_images

# Without a GPU the Triton kernels run through Triton's interpreter (decided when a kernel is defined, so
# before any test imports one).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
