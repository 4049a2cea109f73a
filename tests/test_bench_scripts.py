"""The benchmark scripts under benchmarks/ run end to end (tiny shapes; timings are not checked)."""

from __future__ import annotations

import json
import sys

from helpers import ROOT


def test_kernel_benchmark_smoke(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_kernels

    code = bench_kernels.main(["--smoke", "--dtypes", "fp32", "--impls", "triton,torch", "--reps", "1",
                               "-o", str(tmp_path)])
    assert code == 0
    report = json.loads(next(tmp_path.glob("kernels_*.json")).read_text())
    ops = {r["op"] for r in report["rows"]}
    assert ops == {"generator_epilogue", "encoder_epilogue", "act_stats_blur", "act_stats_pool", "modulate_blur",
                   "modulated_conv3x3"}
    assert all(r["ms"] > 0 and r["gb_per_s"] > 0 for r in report["rows"])
    assert next(tmp_path.glob("kernels_*.md")).read_text().startswith("# Kernel benchmark")
    sys.modules.pop("bench_kernels", None)
