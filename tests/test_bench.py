"""`alae-rt bench` on a tiny preset: it runs, writes valid reports with every field, and measures errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alae_rt import InputError, ModelConfig
from alae_rt.bench import OPS, format_table, run_bench, write_report
from alae_rt.cli import main
from alae_rt.flops import count_flops

FIELDS = {"op", "backend", "dtype", "batch", "median_ms", "p90_ms", "images_per_s", "gflops_per_s", "peak_mem_mb",
          "max_abs_err", "vs_official", "reps"}


@pytest.fixture(scope="module")
def report():
    return run_bench(config="tiny", backends=["eager"], dtypes=["fp32", "bf16"], batches=[1, 3], device="cpu",
                     min_reps=2, min_time_s=0.0, log=lambda m: None)


def test_every_case_is_measured_with_every_field(report):
    rows = report["rows"]
    cases = {(r["backend"], r["dtype"], r["batch"], r["op"]) for r in rows}
    expected = {(b, d, n, op) for b, d in [("official", "fp32"), ("eager", "fp32"), ("eager", "bf16")]
                for n in (1, 3) for op in OPS}
    assert cases == expected and len(rows) == len(expected)
    gflops = report["model"]["gflops_per_image"]
    flops = count_flops(ModelConfig.preset("tiny"))
    assert all(gflops[op] == pytest.approx(flops[op] / 1e9) for op in ("encode", "decode", "map"))
    assert gflops["reconstruct"] == pytest.approx(gflops["encode"] + gflops["decode"])
    official_ms = {(r["op"], r["batch"]): r["median_ms"] for r in rows if r["backend"] == "official"}
    for r in rows:
        assert set(r) == FIELDS
        # A measured time: finite, positive, the median at most the p90, from min_reps calls (min_time_s is 0).
        assert math.isfinite(r["p90_ms"]) and 0 < r["median_ms"] <= r["p90_ms"] and r["reps"] == 2
        # The derived figures follow from it: images/s = batch / seconds, GFLOP/s = GFLOPs per image * images/s,
        # and the speed-up is the official-order median over this one (1 for the official rows themselves).
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["median_ms"] / 1e3))
        assert r["gflops_per_s"] == pytest.approx(gflops[r["op"]] * r["images_per_s"])
        assert r["vs_official"] == pytest.approx(official_ms[(r["op"], r["batch"])] / r["median_ms"])
        assert r["peak_mem_mb"] is not None and math.isfinite(r["peak_mem_mb"]) and r["peak_mem_mb"] >= 0  # RSS
    assert all(r["vs_official"] == 1.0 for r in rows if r["backend"] == "official")
    machine = report["machine"]
    assert {"device", "device_name", "cpu", "threads", "versions", "date", "commit"} <= set(machine)
    assert "torch" in machine["versions"]


def test_errors_are_measured_against_eager_fp32(report):
    by = {(r["backend"], r["dtype"], r["batch"], r["op"]): r["max_abs_err"] for r in report["rows"]}
    for n in (1, 3):
        for op in OPS:
            assert by[("eager", "fp32", n, op)] < 1e-6
            assert by[("official", "fp32", n, op)] < 1e-4  # same math, the official op order
    # bf16 differs from fp32, and measurably (images in [-1, 1])
    assert 0 < by[("eager", "bf16", 1, "decode")] < 0.25


def test_reports_are_written(report, tmp_path):
    paths = write_report(report, tmp_path, stem="tiny")
    data = json.loads((tmp_path / "tiny.json").read_text())
    assert data["rows"] == report["rows"]
    md = (tmp_path / "tiny.md").read_text()
    assert md.startswith("# alae-rt bench: tiny") and "| decode | eager | bf16 | 3 |" in md
    assert "x official" in format_table(report)
    if len(paths) == 3:  # matplotlib installed
        assert (tmp_path / "tiny.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments():
    with pytest.raises(InputError, match="unknown op"):
        run_bench(config="tiny", ops=["paint"])
    with pytest.raises(InputError, match="batch sizes must be >= 1"):
        run_bench(config="tiny", batches=[0])


def test_cli_bench(capsys, tmp_path):
    code = main(["-q", "bench", "--preset", "tiny", "--backends", "eager,tensorrt", "--dtypes", "fp32",
                 "--batch", "2", "--ops", "decode,map", "--min-reps", "2", "--min-time", "0", "-o", str(tmp_path)])
    out, _ = capsys.readouterr()
    assert code == 0 and "x official" in out and "decode" in out
    data = json.loads(next(tmp_path.glob("bench_tiny_cpu_*.json")).read_text())
    assert {r["backend"] for r in data["rows"]} == {"official", "eager"}
    assert any("tensorrt" in s for s in data["skipped"])  # a backend this machine cannot run: skipped, with why
    code = main(["bench", "--preset", "tiny", "--ops", "paint", "--no-save"])
    assert code == 2 and "unknown op" in capsys.readouterr().err
    code = main(["bench", "--preset", "tiny", "--backends", "eager,nonexistent", "--no-save"])  # a typo: refused
    assert code == 2 and "unknown backend(s) nonexistent" in capsys.readouterr().err


def test_cli_bench_backend_options(capsys, tmp_path):
    """--backend-option reaches the backends that take it (onnxruntime's onnx_dir, which it skipped without), the bar
    counts cases, and the skipped lines print above it, not onto it."""
    pytest.importorskip("onnxruntime")
    missing = tmp_path / "no-export"
    code = main(["bench", "--preset", "tiny", "--backends", "eager,onnxruntime", "--dtypes", "fp32", "--batch", "1",
                 "--ops", "decode", "--min-reps", "1", "--min-time", "0", "--backend-option", f"onnx_dir={missing}",
                 "--no-save"])
    out, err = capsys.readouterr()
    assert code == 0 and "| decode" not in out
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert skipped and all(line.startswith("skipped onnxruntime fp32: ") for line in skipped), err
    assert f"{missing}: no such export folder" in skipped[0]  # it got the folder (it said: needs onnx_dir)
    assert "case/s" in err or "s/case" in err
    assert "img/s" not in err.replace("img/s  GFLOP/s", "")  # the table's column is not the bar
    code = main(["bench", "--preset", "tiny", "--backends", "eager", "--backend-option", "speed=1", "--no-save"])
    assert code == 2 and "none of the backends measured (eager) takes 'speed'" in capsys.readouterr().err
    code = main(["bench", "--preset", "tiny", "--backends", "eager", "--backend-option", "compile:mode=default",
                 "--no-save"])
    assert code == 2 and "backend 'compile' is not measured here" in capsys.readouterr().err


def test_backend_options_go_to_the_backends_that_name_them():
    pytest.importorskip("onnxruntime")
    from alae_rt.cli.bench import with_options

    assert with_options(["eager", "onnxruntime"], ["onnx_dir=x", "threads=2"]) == (
        ["eager"], {"onnxruntime": ("onnxruntime", {"onnx_dir": "x", "threads": 2})})
    assert with_options(["eager", "compile"], ["compile:mode=max-autotune"]) == (
        ["eager"], {"compile": ("compile", {"mode": "max-autotune"})})
    assert with_options(["onnxruntime"], ["onnx_dir=x"])[0] == ["official"]  # not [], which means every backend


def test_peak_memory_counts_memory_an_earlier_case_freed():
    """Two cases doing the same work each read their peak. The second read ~0 MB when the process kept the pages the
    first had freed (glibc keeps freed heap memory below its trim threshold, and raises that threshold as it goes):
    here the threshold is set high so that it keeps all of it."""
    import ctypes
    import ctypes.util

    from alae_rt.bench import _PeakMemory, _track_cpu_memory

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        assert libc.mallopt(-1, 1 << 30) == 1  # M_TRIM_THRESHOLD: 1 GiB
    except (OSError, AttributeError, AssertionError):
        pytest.skip("not glibc")
    _track_cpu_memory()
    peaks = []
    try:
        for _ in range(2):
            with _PeakMemory(torch.device("cpu")) as mem:
                blocks = [bytearray(256 << 10) for _ in range(256)]  # 64 MiB in heap blocks (below mmap's 1 MiB)
                del blocks
            peaks.append(mem.peak_mb)
    finally:
        libc.mallopt(-1, 128 << 10)  # glibc's default
    assert all(p > 48 for p in peaks), peaks


def test_plot_axes_stay_readable(monkeypatch, tmp_path):
    """The map panel's x labels (1e5+ images/s) ran into each other: a few short engineering labels now."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from alae_rt.bench import _plot

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    rows = [{"op": op, "backend": b, "dtype": "fp32", "batch": 1, "images_per_s": v}
            for op, base in (("decode", 40.0), ("map", 250000.0))
            for b, v in (("official", base), ("eager", base * 1.7))]
    report = {"rows": rows, "machine": {"device_name": "cpu", "date": "2025-01-01", "commit": "x"},
              "model": {"name": "tiny"}}
    assert _plot(report, tmp_path / "p.png") is not None
    fig = figures[0]
    fig.canvas.draw()
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert len(labels) <= 6 and all(len(label) <= 5 for label in labels), labels


def test_unused_stem_never_names_a_recorded_result(tmp_path):
    from alae_rt.bench import unused_stem

    stem = "serve_sim_0.4ms_20261127"  # a dot in the name: the extension is what follows the stem
    assert unused_stem(tmp_path / "absent", stem) == stem
    assert unused_stem(tmp_path, stem) == stem
    (tmp_path / f"{stem}.json").write_text("{}")
    (tmp_path / f"{stem}_8per_request.json").write_text("{}")  # another result that starts alike
    assert unused_stem(tmp_path, stem) == f"{stem}-2"
    (tmp_path / f"{stem}-2.png").write_bytes(b"")
    assert unused_stem(tmp_path, stem) == f"{stem}-3"
    assert unused_stem(tmp_path, f"{stem}_8per_request") == f"{stem}_8per_request-2"
