"""What a new user hit: the Makefile's serve-demo when the server cannot start, a port in use, the Triton
repository's default device, the labels of training's and the directions' pictures."""

from __future__ import annotations

import os
import shutil
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
