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
from helpers import DIRECTIONS, FACES128, find_row, has_text, require
from serve_helpers import one_torch_thread, tiny_rt, tiny_server

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
        assert not (tmp_path / "port").exists()  # the port file goes with the server
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


@pytest.fixture(scope="module")
def tiny_process(tmp_path_factory):
    """One `alae-rt serve --preset tiny --max-images 2` process for the tests that leave it as they found it (they
    only call it); yields its address."""
    with server_process(tmp_path_factory.mktemp("tiny_process"), "--preset", "tiny", "--max-images", "2") as (
            _, address, _):
        yield address


def test_cli_client_round_trip(tmp_path, tiny_process):
    """Every client verb against a server that takes 2 inputs a request: the client sends its inputs in requests
    within that (the README's flow: encode many faces, then edit, mix and decode all their latents), writes the local
    commands' files and grids, and starts without torch."""
    faces = require(FACES128)
    files = sorted(faces.glob("*.png"))[:3]
    direction = tmp_path / "dir.npy"
    np.save(direction, np.random.default_rng(1).standard_normal(32).astype(np.float32))
    srv = ["--server", tiny_process]
    info = run_cli("client", "info", "--json", *srv, cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["config"]["name"] == "tiny" and json.loads(info.stdout)["max_images"] == 2
    enc = run_cli("client", "encode", *map(str, files), "-o", "w.npy", *srv, cwd=tmp_path)
    # reconstruct in a process that reports whether it imported torch (the grid's originals need none)
    reports_torch = ("import sys; from alae_rt.cli import main; code = main(sys.argv[1:]); "
                     "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(code)")
    rec = subprocess.run([sys.executable, "-c", reports_torch, "-q", "client", "reconstruct", *map(str, files),
                          "-o", "rec", *srv], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    gen = run_cli("client", "generate", "--seeds", "0-2", "--noise", "const", "-o", "gen", *srv, cwd=tmp_path)
    edit = run_cli("client", "edit", "seeds:1-2", "--direction", f"{direction}=2", "-o", "edit", *srv, cwd=tmp_path)
    edit_image = run_cli("client", "edit", str(files[0]), "--direction", f"{direction}=2", "-o", "edit_image",
                         *srv, cwd=tmp_path)
    mix = run_cli("client", "mix", "--a", str(files[0]), "--b", "seeds:3-4", "-o", "mix", *srv, cwd=tmp_path)
    # 3 latents against a limit of 2 a request (the README's `client edit out/w.npy` failed with RESOURCE_EXHAUSTED)
    edit_all = run_cli("client", "edit", "w.npy", "--direction", f"{direction}=1", "-o", "edit_all", *srv,
                       cwd=tmp_path)
    mix_all = run_cli("client", "mix", "--a", "w.npy", "--b", "seeds:0-2", "-o", "mix_all", *srv, cwd=tmp_path)
    dec = run_cli("client", "decode", "w.npy", "-o", "dec", *srv, cwd=tmp_path)
    interp = run_cli("client", "interpolate", "--a", "seeds:0", "--b", "seeds:1-3", "--steps", "3", "-o", "interp",
                     *srv, cwd=tmp_path)
    for done in (enc, rec, gen, edit, edit_image, mix, edit_all, mix_all, dec, interp):
        assert done.returncode == 0, done.stderr
    assert rec.stdout.strip().endswith("no torch")
    rt = Runtime.from_config("tiny")
    w = np.load(tmp_path / "w.npy")
    np.testing.assert_allclose(w, rt.encode(files).numpy(), atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "rec").iterdir())[:1] == [f"0000_{files[0].stem}.png"]
    assert (tmp_path / "rec" / "grid.png").is_file()
    styles = np.load(tmp_path / "gen" / "styles.npy")
    np.testing.assert_allclose(styles, rt.truncate(rt.map(rt.seeds_to_z([0, 1, 2]))).numpy(), atol=1e-5)
    edited = np.load(tmp_path / "edit" / "edited.npy")
    d = torch.from_numpy(np.load(direction))
    ref = rt.edit(rt.truncate(rt.map(rt.seeds_to_z([1, 2]))), [(d, 2.0)])
    np.testing.assert_allclose(edited, ref.numpy(), atol=1e-5)
    assert len(list((tmp_path / "mix").glob("mix_*.png"))) == 2
    np.testing.assert_allclose(np.load(tmp_path / "edit_all" / "edited.npy"), w + d.numpy(), atol=1e-5)
    assert len(list((tmp_path / "edit_all").glob("w_*.png"))) == 3
    assert len(list((tmp_path / "mix_all").glob("mix_*.png"))) == 9
    decoded = [read_image(tmp_path / "dec" / f"w_{i:04d}.png").astype(int) for i in range(3)]
    assert np.abs(np.stack(decoded) - rt.to_uint8(rt.decode(w, noise="const")).astype(int)).max() <= 1
    path = np.load(tmp_path / "interp" / "latents.npy")  # [steps, N, 2L, D]
    ends = rt.seed_styles([0]), rt.seed_styles([1, 2, 3])
    np.testing.assert_allclose(path, rt.interpolate(*ends, 3).numpy(), atol=1e-5)
    assert len(list((tmp_path / "interp").glob("seed0000__seed000*_t00*.png"))) == 9
    # The client draws the local command's edit grid: decoded | edited for seeds, original | reconstruction | edited
    # for images, two groups a row, labelled, the same pixels as `alae-rt edit` on the same weights.
    assert "(decoded | edited)" in edit.stdout and "(original | reconstruction | edited)" in edit_image.stdout
    grid = read_image(tmp_path / "edit_image" / "grid.png")
    assert grid.shape[1] == 2 + 3 * 130  # tiny's 16x16 images shown 8x
    save_checkpoint(tmp_path / "tiny.safetensors", rt.model.state_dict(), rt.config)
    assert main(["-q", "edit", "seeds:1-2", "-c", str(tmp_path / "tiny.safetensors"), "--direction", f"{direction}=2",
                 "-o", str(tmp_path / "local_edit")]) == 0
    local, remote = (read_image(tmp_path / d / "grid.png").astype(int) for d in ("local_edit", "edit"))
    assert local.shape[1] == remote.shape[1] == 2 + 4 * 130
    first = np.repeat(np.repeat(rt.to_uint8(rt.decode(rt.seed_styles([1, 2]), noise="const"))[0], 8, 0), 8, 1)
    y = find_row(remote, first, 0)
    assert y is not None and has_text(remote[:y])  # the column labels over the cells
    # The same labels and cells (only the caption's description of the weights differs: a file, random weights)
    assert np.abs(local[:y + 130] - remote[:y + 130]).max() <= 1


def test_client_writes_as_it_goes_and_says_how_much_when_the_server_goes(tmp_path):
    """A long `client generate` whose server is stopped part-way: the images of the requests that completed are on
    disk (and their styles), and the error says how many; UNAVAILABLE is retried for --retry-s first. The call sent
    as the server stops ends, by timing, as the service's UNAVAILABLE, gRPC's own (a refused stream, a refused
    connection) or gRPC's CANCELLED for a call taken but never begun: all are retried, so the last word is always
    UNAVAILABLE (test_a_call_the_stopping_server_cancelled_is_retried has the CANCELLED case on its own)."""
    with server_process(tmp_path, "--preset", "tiny", "--max-images", "2") as (proc, address, _):
        client = subprocess.Popen([*ALAE_RT, "-q", "client", "generate", "--seeds", "0-5999", "--server", address,
                                   "--retry-s", "1", "-o", "gen"], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while len(list((tmp_path / "gen").glob("*.png"))) < 4 if (tmp_path / "gen").is_dir() else True:
            assert client.poll() is None, client.communicate()
            assert time.monotonic() - t0 < 120
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        out, err = client.communicate(timeout=120)
    assert client.returncode == 2, (out, err)
    written = len(list((tmp_path / "gen").glob("seed*.png")))
    assert 4 <= written < 6000
    last = err.strip().splitlines()[-1]
    assert last.startswith("alae-rt: error: ") and "UNAVAILABLE" in last and "retries" in last
    assert f"wrote {written} of 6000 image(s) to gen before the failure" in last
    assert np.load(tmp_path / "gen" / "styles.npy").shape[0] == written
    assert not (tmp_path / "port").exists()


def test_a_call_the_stopping_server_cancelled_is_retried(tiny_server):
    """gRPC's core ends with CANCELLED (grpc/grpc#41785) a call that a stopping server had taken but not handed to a
    handler: the client did not cancel it, and a retry (here to a server that answers) gives the answer. This gRPC
    server on loopback answers its first Generate as that stopping server does, and passes the next on to a real
    one."""
    method = "/alae_rt.v1.Alae/Generate"
    calls: list[str] = []

    class StoppingFirst(grpc.GenericRpcHandler):
        def service(self, details):
            if details.method != method:
                return None

            def generate(request: bytes, context) -> bytes:
                calls.append("cancelled" if not calls else "passed on")
                if len(calls) == 1:
                    context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
                with grpc.insecure_channel(tiny_server.address) as channel:
                    return channel.unary_unary(method)(request, timeout=60)

            return grpc.unary_unary_rpc_method_handler(generate)

    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(1), handlers=[StoppingFirst()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    retries: list[str] = []
    try:
        with AlaeClient(f"127.0.0.1:{port}", retry_s=30, on_retry=retries.append) as c:
            got = c.generate(seeds=[5, 6], noise="const").images
        with AlaeClient(tiny_server.address) as c:
            want = c.generate(seeds=[5, 6], noise="const").images
        assert calls == ["cancelled", "passed on"]
        calls.clear()
        with AlaeClient(f"127.0.0.1:{port}") as c, pytest.raises(RemoteError, match="^Generate: CANCELLED"):
            c.generate(seeds=[5])  # no retries asked for: reported as it came
    finally:
        server.stop(None)
    assert retries == ["Generate: CANCELLED (CANCELLED); retrying for up to 30 s"]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))


def test_client_retries_while_the_server_starts(tmp_path):
    """A client started before its server: UNAVAILABLE is retried with backoff until the server answers."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = subprocess.Popen([*ALAE_RT, "client", "generate", "--seeds", "0-1", "--server", f"127.0.0.1:{port}",
                               "--retry-s", "120", "-o", "gen"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert client.poll() is None  # still trying
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([*ALAE_RT, "serve", "--preset", "tiny", "--port", str(port), "--threads", "1"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        out, err = client.communicate(timeout=180)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        log.close()
    assert client.returncode == 0, err
    assert "UNAVAILABLE" in err and "retrying for up to 120 s" in err and "wrote 2 image(s)" in out
    assert err.count("retrying for up to") == 1  # said once, not at every try


def test_cli_errors_are_one_line(tmp_path, tiny_process):
    """Errors from a server that runs (an unknown direction, a --psi out of range) and from none, and bad options:
    one line each, no traceback, exit status 2."""
    srv = ["--server", tiny_process]
    unknown = run_cli("client", "edit", "seeds:1", "--direction", "smile=2", "-o", "e2", *srv, cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1].startswith("alae-rt: error: Edit: INVALID_ARGUMENT: edits[0].name")
    assert "Traceback" not in unknown.stderr
    psi = run_cli("client", "generate", "--seeds", "0", "--psi", "1e30", "-o", "psi", *srv, cwd=tmp_path)
    assert psi.returncode == 2 and "--psi: 1e+30 is out of range" in psi.stderr and "[-2.0, 2.0]" in psi.stderr
    down = run_cli("client", "info", "--server", "127.0.0.1:1", "--timeout", "3", "--retry-s", "0", cwd=tmp_path)
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
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "these directions are for a model with D=512 (the official FFHQ); this model has D=32" in done.stderr

