"""`alae-rt serve` as a real process: SIGTERM drains with calls in flight; `alae-rt client` end to end."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from helpers import DIRECTIONS, FACES128, require
from serve_helpers import one_torch_thread

from alae_rt import Runtime, save_checkpoint
from alae_rt.cli import main
from alae_rt.images import read_image
from alae_rt.serve.client import AlaeClient, RemoteError

ALAE_RT = [sys.executable, "-m", "alae_rt.cli"]


@contextmanager
def server_process(tmp_path: Path, *args: str):
    """`alae-rt serve ... --port 0` in a subprocess; yields (process, address, metrics port)."""
    port_file = tmp_path / "port"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([*ALAE_RT, "serve", "--port", "0", "--port-file", str(port_file), "--metrics-port", "0",
                             "--threads", "1", *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() - t0 < 120, "the server did not start"
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        with AlaeClient(address) as c:
            while c.health() != "SERVING":
                assert time.monotonic() - t0 < 120, "the server did not warm up"
                time.sleep(0.05)
        metrics_port = next(json.loads(line)["metrics_port"] for line in (tmp_path / "server.log").read_text()
                            .splitlines() if '"event": "listening"' in line)
        yield proc, address, metrics_port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        log.close()


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_sigterm_drains_calls_in_flight_and_loses_none(tmp_path):
    n_calls, per_call = 16, 8
    with server_process(tmp_path, "--preset", "small-64", "--max-batch", "1", "--max-delay-ms", "0") as (
            proc, address, metrics_port):
        rng = np.random.default_rng(0)
        inputs = [rng.integers(0, 256, (per_call, 64, 64, 3), dtype=np.uint8) for _ in range(n_calls)]
        results: list = [None] * n_calls
        # Every client connects first and the calls leave together: all of them are then in flight at once
        # (the server computes one image at a time), however slowly a busy machine starts the threads.
        ready = threading.Barrier(n_calls + 1)

        def call(i: int) -> None:
            with AlaeClient(address, timeout=120) as c:
                c.health()
                ready.wait(60)
                try:
                    results[i] = c.reconstruct(inputs[i], format="raw")
                except RemoteError as exc:
                    results[i] = exc

        threads = [threading.Thread(target=call, args=(i,)) for i in range(n_calls)]
        for t in threads:
            t.start()
        ready.wait(60)
        t0 = time.monotonic()
        while metric(metrics_port, "alae_rt_inflight_requests") < n_calls:
            assert time.monotonic() - t0 < 60
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        with AlaeClient(address, timeout=10) as c:
            t0 = time.monotonic()
            while (status := c.health()) == "SERVING" and time.monotonic() - t0 < 10:
                time.sleep(0.01)
            assert status == "NOT_SERVING"
            with pytest.raises(RemoteError) as err:
                c.encode(inputs[0][:1])
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
            assert metric(metrics_port, "alae_rt_inflight_requests") > 0, "the calls ended before the checks"
        for t in threads:
            t.join(120)
        assert proc.wait(60) == 0
    rt = Runtime.from_config("small-64")
    for x, res in zip(inputs, results):
        assert not isinstance(res, Exception), res
        got = np.stack(res.images).astype(int)
        assert np.abs(got - rt.to_uint8(rt.reconstruct(list(x), noise="const")).astype(int)).max() <= 1
    log = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.startswith("{")]
    events = [e.get("event") for e in log]
    assert "draining" in events and events[-1] == "stopped"
    assert sum(1 for e in log if e.get("event") == "rpc" and e["method"] == "Reconstruct" and e["code"] == "OK") \
        == n_calls


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*ALAE_RT, "-q", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_client_round_trip(tmp_path):
    faces = require(FACES128)
    files = sorted(faces.glob("*.png"))[:3]
    direction = tmp_path / "dir.npy"
    np.save(direction, np.random.default_rng(1).standard_normal(32).astype(np.float32))
    with server_process(tmp_path, "--preset", "tiny") as (_, address, _):
        srv = ["--server", address]
        info = run_cli("client", "info", "--json", *srv, cwd=tmp_path)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["config"]["name"] == "tiny"
        enc = run_cli("client", "encode", *map(str, files), "-o", "w.npy", *srv, cwd=tmp_path)
        rec = run_cli("client", "reconstruct", *map(str, files), "-o", "rec", *srv, cwd=tmp_path)
        gen = run_cli("client", "generate", "--seeds", "0-2", "--noise", "const", "-o", "gen", *srv, cwd=tmp_path)
        edit = run_cli("client", "edit", "seeds:1-2", "--direction", f"{direction}=2", "-o", "edit", *srv, cwd=tmp_path)
        edit_image = run_cli("client", "edit", str(files[0]), "--direction", f"{direction}=2", "-o", "edit_image",
                             *srv, cwd=tmp_path)
        mix = run_cli("client", "mix", "--a", str(files[0]), "--b", "seeds:3-4", "-o", "mix", *srv, cwd=tmp_path)
        unknown = run_cli("client", "edit", "seeds:1", "--direction", "smile=2", "-o", "e2", *srv, cwd=tmp_path)
    for done in (enc, rec, gen, edit, edit_image, mix):
        assert done.returncode == 0, done.stderr
    rt = Runtime.from_config("tiny")
    np.testing.assert_allclose(np.load(tmp_path / "w.npy"), rt.encode(files).numpy(), atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "rec").iterdir())[:1] == [f"0000_{files[0].stem}.png"]
    assert (tmp_path / "rec" / "grid.png").is_file()
    styles = np.load(tmp_path / "gen" / "styles.npy")
    np.testing.assert_allclose(styles, rt.truncate(rt.map(rt.seeds_to_z([0, 1, 2]))).numpy(), atol=1e-5)
    edited = np.load(tmp_path / "edit" / "edited.npy")
    ref = rt.edit(rt.truncate(rt.map(rt.seeds_to_z([1, 2]))), [(torch.from_numpy(np.load(direction)), 2.0)])
    np.testing.assert_allclose(edited, ref.numpy(), atol=1e-5)
    assert len(list((tmp_path / "mix").glob("mix_*.png"))) == 2
    # The client draws the local command's edit grid: decoded | edited for seeds, original | reconstruction | edited
    # for images, two groups a row, the same pixels as `alae-rt edit` on the same weights.
    assert "(decoded | edited)" in edit.stdout and "(original | reconstruction | edited)" in edit_image.stdout
    assert read_image(tmp_path / "edit_image" / "grid.png").shape == (2 + 18, 2 + 3 * 18, 3)
    save_checkpoint(tmp_path / "tiny.safetensors", rt.model.state_dict(), rt.config)
    assert main(["-q", "edit", "seeds:1-2", "-c", str(tmp_path / "tiny.safetensors"), "--direction", f"{direction}=2",
                 "-o", str(tmp_path / "local_edit")]) == 0
    local, remote = (read_image(tmp_path / d / "grid.png").astype(int) for d in ("local_edit", "edit"))
    assert local.shape == remote.shape == (2 + 18, 2 + 4 * 18, 3) and np.abs(local - remote).max() <= 1
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1].startswith("alae-rt: error: Edit: INVALID_ARGUMENT: edits[0].name")
    assert "Traceback" not in unknown.stderr


def test_cli_errors_are_one_line(tmp_path):
    down = run_cli("client", "info", "--server", "127.0.0.1:1", "--timeout", "3", cwd=tmp_path)
    assert down.returncode == 2 and "Traceback" not in down.stderr
    assert down.stderr.strip().startswith("alae-rt: error: GetModelInfo: UNAVAILABLE")
    both = run_cli("serve", "--preset", "tiny", "-c", "x.pth", "--port", "0", cwd=tmp_path)
    assert both.returncode == 2 and "give --checkpoint or --preset, not both" in both.stderr
    helptext = run_cli("serve", "--help", cwd=tmp_path)
    for flag in ("--max-batch", "--max-delay-ms", "--max-queue", "--max-images", "--max-message-mb", "--grace-s",
                 "--tls-cert", "--auth-token-file", "--metrics-port"):
        assert flag in helptext.stdout


def test_serve_refuses_directions_that_do_not_fit(tmp_path):
    require(DIRECTIONS)
    done = run_cli("serve", "--preset", "tiny", "--port", "0", "--directions-dir", str(DIRECTIONS), cwd=tmp_path)
    assert done.returncode == 2 and "direction" in done.stderr and "Traceback" not in done.stderr

