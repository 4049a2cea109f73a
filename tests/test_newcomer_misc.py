"""What a new user hit: the Makefile's serve-demo when the server cannot start, a port in use, the Triton
repository's default device, the labels of training's and the directions' pictures."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

VENV = Path(sys.executable).parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_serve_demo_with_missing_faces_says_so_in_one_line_and_leaves_nothing(tmp_path):
    """The server stops at start with its one-line error: no `kill: No such process`, no empty SERVE_OUT, no
    port-file folder left in TMPDIR."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out" / "serve-demo"
    # -o setup: the suite runs in a set-up environment (VENV: this interpreter's), so make installs nothing
    proc = subprocess.run(["make", "-s", "-o", "setup", "serve-demo", f"VENV={VENV}", f"SHARED={tmp_path}/missing",
                           f"SERVE_OUT={out}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(tmp)})
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("make")]
    assert lines == [f"alae-rt: error: {tmp_path}/missing/data/faces128: no such folder (--sample-faces)"], proc.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp.iterdir() if p.name.startswith("tmp.")] == []  # mktemp -d's port-file folder


@pytest.fixture
def busy_port():
    """A port that a socket on 127.0.0.1 listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def serve_logger():
    """`serve` in this process points the server's log at this test's stderr: put it back afterwards."""
    from alae_rt.serve.logs import LOGGER

    logger = logging.getLogger(LOGGER)
    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.mark.parametrize(("flag", "what"), [("--port", "listen on"), ("--http-port", "serve HTTP on"),
                                            ("--metrics-port", "serve metrics on")])
def test_serve_on_a_port_in_use_says_so_in_one_line(capfd, busy_port, serve_logger, flag, what):
    """The whole of stderr (gRPC's core writes to the file descriptor) is one line: no gRPC log line and hint
    around it, no "stopped" line before it; checked before the model loads."""
    from alae_rt.cli import main

    code = main(["serve", "--preset", "tiny", *([] if flag == "--port" else ["--port", "0"]), flag, str(busy_port)])
    out, err = capfd.readouterr()
    assert code == 2
    assert err.splitlines() == [f"alae-rt: error: cannot {what} 127.0.0.1:{busy_port}: Address already in use "
                                "(is the port in use?)"], err


def test_the_server_refuses_a_port_in_use_before_it_starts_anything(busy_port, serve_logger):
    """AlaeServer.start, for callers of the API: the error, and no "listening" or "stopped" in the log."""
    import asyncio

    from alae_rt import Runtime
    from alae_rt.errors import AlaeError
    from alae_rt.serve.config import ServeConfig
    from alae_rt.serve.server import AlaeServer

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    serve_logger.addHandler(handler)
    server = AlaeServer(Runtime.from_config("tiny"), ServeConfig(port=0, http_port=busy_port, warmup=False))
    with pytest.raises(AlaeError, match=f"cannot serve HTTP on 127.0.0.1:{busy_port}: Address already in use"):
        asyncio.run(server.start())
    assert records == []


def test_a_preview_title_names_a_direction_once_and_each_block_has_its_strengths():
    """`directions fit` without --label gives label = name: the title was "smile: smile - ...". The strengths were
    one header above the first title; each block now has its title, then the strength of each column."""
    import numpy as np

    from alae_rt.directions import Direction, labelled_grid, preview_title

    stats = {"accuracy": 0.9, "folds": 5, "chance": 0.5, "better_than_chance": True}
    smile = Direction("smile", np.ones(4, np.float32) / 2, "smile", "fit", 0.5, stats)
    assert preview_title(smile).startswith("smile - held-out accuracy 90.0% (5-fold")
    bright = Direction("bright", np.ones(4, np.float32) / 2, "brighter", "fit", 0.5, stats)
    assert preview_title(bright).startswith("bright: brighter - held-out accuracy")
    white = np.full((16, 16, 3), 255, np.uint8)
    grid = labelled_grid([[[white] * 3], [[white] * 3]], ["a", "b"], ["-1 sd", "0", "+1 sd"], cell=None, pad=2)
    line = 14
    assert grid.shape == (2 * (2 * line + 16 + 2) + 2, 2 + 3 * (16 + 2), 3)
    second = 2 * line + 16 + 2  # the second block's title, then its strengths, then its row
    for band in (grid[:line], grid[line:2 * line], grid[second:second + line], grid[second + line:second + 2 * line]):
        assert (band < 128).any()  # text in each strip
    assert (grid[2 * line:2 * line + 16] == 255).all() and (grid[second + 2 * line:] == 255).all()  # no text on faces
