"""The load benchmark runs end to end on a small preset (numbers are recorded elsewhere, never asserted)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from helpers import ROOT


def test_serve_load_benchmark_runs_on_a_small_preset(tmp_path):
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--preset", "tiny", "--threads", "1", "--concurrency", "1,4", "--requests", "16", "--duration", "20",
            "--baseline-seconds", "0.2", "--op", "reconstruct", "-o", str(tmp_path), "--tag", "run"]
    threads = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark sets the baseline's thread count in this process
    report = json.loads((tmp_path / "run.json").read_text())
    assert [r["concurrency"] for r in report["levels"]] == [1, 4]
    for level in report["levels"]:
        n = level["concurrency"]
        assert level["requests"] == 16 and not level["errors"]
        assert math.isfinite(level["seconds"]) and level["seconds"] > 0
        assert level["images_per_s"] == pytest.approx(level["requests"] / level["seconds"])
        assert 0 < level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"] < level["seconds"] * 1e3
        # n callers, one image each: the server's batches hold 1 to n images (exactly 1 for a single caller)
        assert 1 <= level["mean_batch"] <= n and (n > 1 or level["mean_batch"] == 1)
        base = level["baseline"]
        assert base["batch"] == max(1, min(8, round(level["mean_batch"])))  # --max-batch is 8 by default
        assert base["calls"] >= 3 and math.isfinite(base["images_per_s"]) and base["images_per_s"] > 0
        assert 0 < base["p50_ms"] <= base["p99_ms"]
    assert report["levels"][0]["baseline"]["calls"] == 16  # at one caller as many direct calls as served ones
    meta = report["meta"]
    assert meta["commit"] and meta["device"] and meta["date"] and meta["op"] == "reconstruct"
    assert "| 4 | 16 |" in (tmp_path / "run.md").read_text()
