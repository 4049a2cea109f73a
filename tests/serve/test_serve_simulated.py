"""The GPU-regime simulation: a server over the stand-in model gives the real request path's answers (fixed images,
the real latents) and serve_load's --simulate-model sweep reports every case, labelled as simulated."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT
from serve_helpers import ServerThread

from alae_rt.serve.client import AlaeClient
from alae_rt.serve.config import ServeConfig
from alae_rt.serve.simulated import SimulatedRuntime


def test_the_simulated_model_serves_fixed_images_through_the_real_path():
    face = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    rt = SimulatedRuntime(0.1, 0.5, face, max_batch=4)
    assert rt.backend.name.startswith("simulated model")
    with ServerThread(rt, ServeConfig(port=0, max_delay_ms=1)) as st, AlaeClient(st.address) as c:
        assert c.info().backend.startswith("simulated model")
        w = np.zeros((2, 512), np.float32)
        for fmt in ("raw", "png"):
            images = c.decode(w, format=fmt).images
            assert len(images) == 2 and all(np.array_equal(img, face) for img in images)
        jpeg = c.decode(w, format="jpeg").images[0]
        assert jpeg.shape == face.shape
        got = c.encode([face, face])
        np.testing.assert_array_equal(got, np.repeat(rt.model.dlatent_avg[:1].numpy(), 2, 0))
        with pytest.raises(Exception, match="cutoff"):
            c.mix(w, w, cutoff=99)  # the Runtime's rules stand


def test_serve_load_simulated_sweep_reports_every_case(tmp_path):
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--simulate-model", "0.2,1", "--concurrency", "1,2", "--requests", "4", "--duration", "20",
            "--formats", "raw,jpeg,latents", "--encode-from", "jpeg", "--warmup", "1", "-o", str(tmp_path),
            "--tag", "sim", "--images-per-request", "2"]
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "sim.json").read_text())
    assert report["meta"]["simulated_model"] is True
    cases = [(r["case"], r["concurrency"]) for r in report["rows"]]
    assert cases == [(c, n) for c in ("decode to raw", "decode to jpeg", "decode to latents", "encode from jpeg")
                     for n in (1, 2)]
    for r in report["rows"]:
        assert r["requests"] == 4 and r["images"] == 8 and not r["errors"]
        assert 0 <= r["server_cpu_ms_per_image"] < 60_000  # /proc counts in 10 ms ticks: a short level may read 0
        assert 0 <= r["loop_cpu_ms_per_image"] <= r["server_cpu_ms_per_image"] + 10
        assert r["images_per_s"] == pytest.approx(r["images"] / r["seconds"])
    text = (tmp_path / "sim.md").read_text()
    assert text.startswith("# Serving with a SIMULATED MODEL") and "| encode from jpeg |" in text
    assert report["meta"]["prep_ms_per_image"] > 0 and report["meta"]["images_per_request"] == 2
    assert "input preparation" in text and "Without it, encode from jpeg" in text and "Event-loop CPU-ms" in text


def test_tree_cpu_counts_the_children():
    """The server's CPU time includes its codec processes': tree_cpu follows the process tree."""
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # The child spends 0.3 s of CPU, then waits on the stdin it shares with its parent: it stays in the tree until
    # the test closes that pipe, however busy the machine (a fixed 4 s of spinning cost 4 s of CPU every run).
    busy = "import sys, time\nwhile time.process_time() < 0.3: pass\nsys.stdin.read()"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                               f"{busy!r}]); sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        deadline, child = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            tree = bench.tree_cpu(parent.pid)
            child = next((pid for pid in tree if pid != parent.pid), None)
            if child is not None and tree[child] >= 0.2:
                break
            time.sleep(0.05)
        assert parent.pid in tree and len(tree) == 2
        assert tree[child] >= 0.2  # the busy child's time, counted under the parent's tree
    finally:
        parent.communicate(b"", timeout=30)


def test_serve_load_with_server_processes_counts_every_process(tmp_path):
    """--server-processes 2: the sweep runs against two server processes on one port; the load's connections
    (one each, not one shared) spread over them, the batch sizes are scraped from both processes' metrics ports
    and the event-loop time is both processes' main threads."""
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--simulate-model", "0.2,1", "--concurrency", "8", "--requests", "48", "--duration", "20",
            "--formats", "jpeg", "--encode-from", "", "--warmup", "1", "-o", str(tmp_path), "--tag", "sim2",
            "--server-processes", "2", "--workers", "1", "--codec-processes", "0"]
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "sim2.json").read_text())
    assert report["meta"]["server_processes"] == 2
    [row] = report["rows"]
    assert row["requests"] == 48 and not row["errors"] and row["mean_batch"] >= 1  # scraped from both ports
    text = (tmp_path / "sim2.md").read_text()
    assert "--processes 2" in text and "2 x 1000 / this" in text and "Without it" not in text


def test_serve_load_refuses_unknown_formats_in_one_line(capsys):
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for option, value in (("--encode-from", "none"), ("--formats", "raw,gif")):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(["--simulate-model", "0.4", option, value])
        assert exc.value.code == 2
        assert f"{option} {value.split(',')[-1]}: expected some of" in capsys.readouterr().err
    for argv, message in ((["--concurrency", "a"], "--concurrency 'a': expected caller counts"),
                          (["--simulate-model", "0.4", "--image", "absent.png"], "--image absent.png: no such file")):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert message in capsys.readouterr().err


def test_serve_load_against_a_server_whose_config_is_no_preset(tmp_path):
    """--server: the in-process baseline takes the server's architecture from its config itself (the simulated
    model's "simulated-1024" is no preset), not from a preset of its name."""
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from alae_rt.config import ModelConfig

    cfg = ModelConfig(3, 4, 4, 16, 2, name="not-a-preset")
    rt = SimulatedRuntime(0.1, 0.5, config=cfg, max_batch=4)
    with ServerThread(rt, ServeConfig(port=0, max_delay_ms=1)) as st:
        argv = ["--server", st.address, "--concurrency", "1", "--requests", "4", "--duration", "20",
                "--baseline-seconds", "0.2", "-o", str(tmp_path), "--tag", "srv"]
        assert bench.main(argv) == 0
    report = json.loads((tmp_path / "srv.json").read_text())
    assert report["levels"][0]["requests"] == 4 and report["meta"]["model"].startswith("not-a-preset 16x16")
