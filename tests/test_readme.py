"""The README stays true: the commands of its Command line and Serving sections and its Python client snippet run as
written on the bundled default model, against one real `alae-rt serve` started with the README's own command line.

Commands that need the official FFHQ weights, and Python blocks that need them (or a GPU, or exported files), are
listed below with the reason; every other command and block is run, so a new one is either true or listed."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, SHARED, require

pytest.importorskip("grpc", reason="the serve extra is not installed (make setup installs it)")

README = ROOT / "README.md"
# Commands shown for the official FFHQ weights (model_157.pth), which are not part of the project.
NEEDS_FFHQ = {
    "alae-rt info -c model_157.pth",
    "alae-rt convert model_157.pth -o ffhq.safetensors",
    "alae-rt reconstruct photos/ -c ffhq.safetensors -o rec/",
    "alae-rt edit photos/ --direction smile=3 --directions-dir ../shared/data/principal_directions -c "
    "ffhq.safetensors -o edit/",
}
# Python blocks not run, by their first line, and why.
PYTHON_NOT_RUN = {
    "import torch, alae_rt": "the Python API tour loads model_157.pth on a CUDA device",
    'rt = alae_rt.Runtime.load("model.safetensors", backend="onnxruntime", backend_options={"onnx_dir": "onnx/"})':
        "needs a checkpoint and the ONNX files exported from it",
    "import alae_rt": "the directions tour reads folders of your own photos (faces/, smiling/, neutral/)",
    "from alae_rt.serve.balancing import BalancedClient": "run by tests/serve/test_serve_balancing.py, against its two "
                                                         "servers",
}
README_PORT = "127.0.0.1:50051"


def section(name: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {name}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def commands(text: str) -> list[str]:
    """The shell commands of a section's ```sh blocks: continuation lines joined, comments dropped."""
    out = []
    for block in blocks(text, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(" ".join(line.split()))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A project folder with ../shared beside it, as in a checkout."""
    base = tmp_path_factory.mktemp("readme")
    (base / "shared").symlink_to(require(SHARED).resolve(), target_is_directory=True)
    (base / "repo").mkdir()
    return base / "repo"


@pytest.fixture(scope="module")
def server(workdir):
    """The README's `alae-rt serve` line, on free ports instead of 50051 / 9464; yields the address."""
    serve = [c for c in commands(section("Serving")) if c.startswith("alae-rt serve")]
    assert len(serve) == 1, serve
    argv = shlex.split(serve[0])[1:]
    port, metrics = free_port(), free_port()
    argv = [str(port) if prev == "--port" else str(metrics) if prev == "--metrics-port" else a
            for prev, a in zip(["", *argv], argv)]
    log = open(workdir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "alae_rt.cli", *argv, "--threads", "1"], cwd=workdir,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def run_command(command: str, workdir: Path, server: str | None = None) -> None:
    """One README command in `workdir`: alae-rt in this process (globs expanded as a shell does), python as a
    child process."""
    from alae_rt.cli import main

    argv = shlex.split(command)
    if argv[0] == "python":
        done = subprocess.run([sys.executable, *argv[1:]], cwd=workdir, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr)
        return
    assert argv[0] == "alae-rt", command
    expanded = []
    for a in argv[1:]:
        matches = sorted(glob.glob(a, root_dir=workdir)) if any(ch in a for ch in "*?[") else []
        expanded.extend(matches or [a])
    if server is not None and expanded[0] == "client":
        expanded += ["--server", server]
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        code = main(["-q", *expanded])
    finally:
        os.chdir(cwd)
    assert code == 0, command


def test_command_line_section_runs_on_the_default_model(workdir, capsys):
    cmds = commands(section("Command line"))
    skipped = [c for c in cmds if c in NEEDS_FFHQ]
    assert set(skipped) == NEEDS_FFHQ, "a listed FFHQ command is no longer in the README: update NEEDS_FFHQ"
    for command in cmds:
        if command not in NEEDS_FFHQ:
            run_command(command, workdir)
    out = workdir / "out"
    assert len(list((out / "decoded").glob("*.png"))) == 110
    for folder in ("rec", "gen", "mix", "edit", "interp"):
        assert (out / folder / "grid.png").is_file(), folder


def test_serving_section_runs_against_the_readme_server(workdir, server, capsys):
    from alae_rt.serve.client import AlaeClient

    with AlaeClient(server) as c:
        t0 = time.monotonic()
        while True:  # started above; the README's own `client health --wait 60` then finds it SERVING
            try:
                c.health()
                break
            except Exception:
                assert time.monotonic() - t0 < 120
                time.sleep(0.1)
    cmds = [c for c in commands(section("Serving")) if not c.startswith("alae-rt serve")]
    assert any(c.startswith("alae-rt client edit out/w.npy") for c in cmds)  # the flow that broke (issue 17)
    for command in cmds:
        run_command(command, workdir, server)
    capsys.readouterr()
    assert len(list((workdir / "out" / "edit-all").glob("w_*.png"))) == 110
    info = json.loads(subprocess.run([sys.executable, "-m", "alae_rt.cli", "client", "info", "--json", "--server",
                                      server], capture_output=True, text=True, timeout=60).stdout)
    assert info["max_images"] < 110  # so the 110 latents above went in several requests


def test_python_client_snippet_runs_as_written(workdir, server, tmp_path, capsys):
    """The Serving section's Python block, with the README's address pointing at the test's server, in a folder
    where face.png is a sample face."""
    code = blocks(section("Serving"), "python")
    assert len(code) == 1
    assert README_PORT in code[0]
    (tmp_path / "face.png").write_bytes((SHARED / "data" / "faces128" / "00000.png").read_bytes())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code[0].replace(README_PORT, server), "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 8 and printed[-1].startswith("7 1.0 (64, 64, 3)")


def test_every_python_block_is_run_or_listed():
    text = README.read_text()
    firsts = [b.splitlines()[0] for b in blocks(text, "python")]
    client = [f for f in firsts if f.startswith("from alae_rt.serve.client import")]
    others = [f for f in firsts if f not in client]
    assert len(client) == 1 and set(others) == set(PYTHON_NOT_RUN), others
