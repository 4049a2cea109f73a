"""The onnxruntime-vs-eager benchmark runs end to end on a small preset and writes its tagged JSON and markdown."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from helpers import ROOT


@pytest.mark.slow
def test_benchmark_script_writes_tagged_results(tmp_path):
    script = ROOT / "benchmarks" / "bench_onnxruntime.py"
    subprocess.run([sys.executable, str(script), "--preset", "tiny", "--repeats", "1", "--warmup", "0",
                    "--out", str(tmp_path)], check=True, capture_output=True, text=True, timeout=600)
    [result] = [json.loads(p.read_text()) for p in tmp_path.glob("onnxruntime_cpu_tiny_b1_*.json")]
    assert {"cpu", "logical_cpus"} <= set(result["device"]) and result["commit"] and result["date"]
    assert {"torch", "onnxruntime", "onnx"} <= set(result["versions"]) and "torch" in result["threads"]
    rows = {(r["op"], r["backend"]): r for r in result["results"]}
    assert set(rows) == {(op, b) for op in ("encode", "decode") for b in ("eager", "onnxruntime")}
    for r in rows.values():
        # One measured median (ms, 2 decimals) and what follows from it: images/s = batch / seconds (4 digits).
        assert r["batch"] == 1 and 0 < r["min_ms"] <= r["median_ms"] and math.isfinite(r["median_ms"])
        slack = 0.005 / r["median_ms"] + 1e-3
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1e3 / r["median_ms"], rel=slack)
        assert math.isfinite(r["gflop_per_s"]) and r["gflop_per_s"] > 0
    assert all(rows[(op, "eager")]["max_abs_error_vs_eager"] == 0.0 for op in ("encode", "decode"))
    assert all(rows[(op, "onnxruntime")]["max_abs_error_vs_eager"] < 1e-4 for op in ("encode", "decode"))
    assert len(list(tmp_path.glob("onnxruntime_cpu_tiny_b1_*.md"))) == 1
