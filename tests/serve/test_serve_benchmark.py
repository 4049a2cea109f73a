"""The load benchmark runs end to end on a small preset (numbers are recorded elsewhere, never asserted)."""

from __future__ import annotations

import importlib.util
import json

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
        assert level["requests"] == 16 and not level["errors"]
        assert level["mean_batch"] >= 1 and level["p99_ms"] >= level["p50_ms"] > 0
        assert level["baseline"]["images_per_s"] > 0
    meta = report["meta"]
    assert meta["commit"] and meta["device"] and meta["date"] and meta["op"] == "reconstruct"
    assert "| 4 | 16 |" in (tmp_path / "run.md").read_text()
