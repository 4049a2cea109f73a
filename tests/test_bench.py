"""`alae-rt bench` on a tiny preset: it runs, writes valid reports with every field, and measures errors."""

from __future__ import annotations

import json
import math

import pytest

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
    code = main(["-q", "bench", "--preset", "tiny", "--backends", "eager,nonexistent", "--dtypes", "fp32",
                 "--batch", "2", "--ops", "decode,map", "--min-reps", "2", "--min-time", "0", "-o", str(tmp_path)])
    out, _ = capsys.readouterr()
    assert code == 0 and "x official" in out and "decode" in out
    data = json.loads(next(tmp_path.glob("bench_tiny_cpu_*.json")).read_text())
    assert {r["backend"] for r in data["rows"]} == {"official", "eager"}
    assert any("nonexistent" in s for s in data["skipped"])
    code = main(["bench", "--preset", "tiny", "--ops", "paint", "--no-save"])
    assert code == 2 and "unknown op" in capsys.readouterr().err
