"""Fixtures and hooks: loaded official fixtures, sample data, the gpu / slow markers (helpers live in helpers.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import FACES128, FIXTURE_NAMES, OFFICIAL, require, write_images
from threadpoolctl import threadpool_limits

# Without a GPU the Triton kernels run through Triton's interpreter (decided when a kernel is defined, so
# before any test imports one).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The child processes the tests start (CLI runs, servers, benchmark scripts) read this when they load numpy; this
# process's own BLAS gets the same limit from one_intra_op_thread below.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


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


def pytest_runtest_logreport(report):
    """ALAE_RT_FAILURES_AT_ONCE=1 (the GPU proof's tests step): a failure's traceback is printed when it happens,
    not in the summary at the end, so a run cut off at its time budget still says what failed and why."""
    if report.failed and os.environ.get("ALAE_RT_FAILURES_AT_ONCE", "0") not in ("", "0"):
        sys.stderr.write(f"\n--- FAILURE {report.nodeid} ({report.when}):\n{report.longreprtext[-3000:]}\n--- END\n")
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def _exact_fp32_on_cuda(request):
    """A gpu test's reference computed on the GPU is fp32, not TF32 (cuDNN's convolutions take TF32 by default,
    a 1e-3 error that an fp32 tolerance would count against the code under test)."""
    if request.node.get_closest_marker("gpu") is None:
        yield
        return
    from alae_rt.bench import exact_fp32

    with exact_fp32(torch.device("cuda")):
        yield


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


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_images(tmp_path / "images", 12)


@pytest.fixture(scope="session", autouse=True)
def one_intra_op_thread():
    """The suite runs torch on one intra-op thread: its models are small, and on two shared cores a second thread
    only adds synchronisation (OpenMP spinning against other jobs made a tiny model's convolution take 10 ms
    instead of a fraction of one). Session-wide, so that module fixtures (an export, a benchmark run) get it too.
    numpy's and scikit-learn's OpenBLAS likewise: the eval test's SVD of 198 faces x 12288 pixels took 11.4 s on
    OpenBLAS's two threads beside the other test process and other jobs, 0.66 s on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def threads_put_back(one_intra_op_thread):
    """A test that sets its own thread count (a CLI --threads, a benchmark) does not leave it to the next ones."""
    yield
    torch.set_num_threads(1)
