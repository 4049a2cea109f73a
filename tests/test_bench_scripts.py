"""The benchmark scripts under benchmarks/ run end to end (tiny shapes; timings are not checked)."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import ROOT


def test_kernel_benchmark_smoke(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_kernels

    code = bench_kernels.main(["--smoke", "--dtypes", "fp32", "--impls", "triton,unfused,torch", "--reps", "1",
                               "-o", str(tmp_path)])
    assert code == 0
    report = json.loads(next(tmp_path.glob("kernels_*.json")).read_text())
    # one entry per op of alae_rt.kernels, each variant timed with both implementations asked for
    assert {r["op"] for r in report["rows"]} == {"act_stats", "modulate", "modulated_conv3x3", "modulated_conv",
                                                 "modulated_blur"}
    cases = {(r["op"], r["variant"], r["impl"], tuple(r["shape"])) for r in report["rows"]}
    # variants x (triton, torch) x smoke shapes, and the convolution unfused (modulate + conv2d + act_stats)
    assert len(cases) == len(report["rows"]) == 10 * 2 * 2 + 2
    assert {r["op"] for r in report["rows"] if r["impl"] == "unfused"} == {"modulated_conv3x3"}
    for r in report["rows"]:
        assert r["gb_per_s"] == pytest.approx(r["bytes"] / (r["ms"] / 1e3) / 1e9)
    assert next(tmp_path.glob("kernels_*.md")).read_text().startswith("# Kernel benchmark")
    sys.modules.pop("bench_kernels", None)


def test_kernel_benchmark_times_no_triton_on_cpu(tmp_path, monkeypatch, capsys):
    """Off CUDA only the torch references are timed: asking for Triton's speed there is refused."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_kernels

    assert bench_kernels.main(["--device", "cpu", "--impls", "torch,triton", "-o", str(tmp_path)]) == 2
    assert "speed needs a CUDA GPU" in capsys.readouterr().err and not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        bench_kernels.main(["--device", "cpu", "--dtypes", "fp8", "-o", str(tmp_path)])
    assert "--dtypes: unknown fp8" in capsys.readouterr().err
    sys.modules.pop("bench_kernels", None)


def test_codec_benchmark_smoke(tmp_path, monkeypatch):
    """benchmarks/codecs.py on one real face: the server's PNG path (processes) beside the thread's, exact, with its
    scaling and GIL columns. Loaded by path: on sys.path its name would shadow the standard library's codecs."""
    import importlib.util

    from helpers import FACES1024, require

    require(FACES1024)
    spec = importlib.util.spec_from_file_location("codec_bench", ROOT / "benchmarks" / "codecs.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "codec_bench", bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    argv = ["--faces", str(FACES1024), "--count", "1", "--repeats", "1", "--threads", "1,2", "--scaling-s", "0.3",
            "--only", "fpng+pyspng,fpng+pyspng in processes,simplejpeg", "-o", str(tmp_path)]
    assert bench.main(argv) == 0
    report = json.loads(next(tmp_path.glob("codecs_1024_*.json")).read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"fpng+pyspng", "fpng+pyspng in processes", "simplejpeg"}
    assert rows["fpng+pyspng in processes"]["exact"] is True and not rows["fpng+pyspng in processes"]["error"]
    assert rows["fpng+pyspng in processes"]["bytes"] == rows["fpng+pyspng"]["bytes"]  # the same PNG files
    assert set(rows["simplejpeg"]["scaling"]) == {"1", "2"} and set(rows["simplejpeg"]["gil_free"]) == {"encode",
                                                                                                         "decode"}
    assert "| fpng+pyspng in processes | png |" in next(tmp_path.glob("codecs_1024_*.md")).read_text()
