"""The GPU proof kit (benchmarks/gpu_check.py) on the CPU: its dry run writes a report in which every step has a
status, the steps' results are there, and the pieces it is built from (limits, goals, budgets, run_bench's
variants and deadline, ALAE_RT_SHARED) behave."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest
from helpers import OFFICIAL, ROOT, require

from alae_rt.bench import run_bench

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STATUSES = {"ran", "skipped", "stopped", "failed"}


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.modules.pop("gpu_check", None)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run, its fixtures read through ALAE_RT_SHARED from a copy holding only the gray32 fixture."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    shared = tmp / "shared"
    (shared / "fixtures" / "official").mkdir(parents=True)
    (shared / "fixtures" / "official" / "gray32").symlink_to(require(OFFICIAL / "gray32"))
    env = dict(os.environ, ALAE_RT_SHARED=str(shared), ALAE_RT_RESULTS_DIR=str(tmp / "collected"))
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp / "results")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = sorted(p.name for p in (tmp / "results").iterdir())
    report = json.loads((tmp / "results" / next(f for f in files if f.endswith(".json"))).read_text())
    return tmp, files, report, res.stdout


def test_dry_run_writes_json_markdown_plot_and_the_collected_copy(dry_run):
    tmp, files, report, _ = dry_run
    stems = {f.rsplit(".", 1)[0] for f in files}
    assert len(stems) == 1 and sorted(f.rsplit(".", 1)[1] for f in files) == ["json", "md", "png"]
    stem = stems.pop()
    machine = report["machine"]
    assert stem.startswith("gpu_check_dry_") and stem.endswith(machine["commit"])  # device, date, commit
    assert machine["commit"] != "unknown" and machine["date"]
    assert (tmp / "results" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    collected = sorted(p.name for p in (tmp / "collected").iterdir())
    assert collected == sorted([*files, f"{stem}.log"])
    log = (tmp / "collected" / f"{stem}.log").read_text()
    assert all(f"== {s['name']}\n" in log for s in report["steps"])
    md = (tmp / "results" / f"{stem}.md").read_text()
    assert md.startswith("# GPU proof (CPU dry run)")
    assert all(f"| {s['name']} | {s['status']} |" in md for s in report["steps"])
    for text in (md, log, (tmp / "results" / f"{stem}.json").read_text()):  # paths as the checkout names them
        assert str(ROOT) not in text


def test_every_step_has_a_status_and_skips_say_why(dry_run, gpu_check):
    _, _, report, stdout = dry_run
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == [s.name for s in gpu_check.STEPS]
    for s in steps.values():
        assert s["status"] in STATUSES, s
        assert s["status"] != "failed", s
        assert s["status"] == "ran" or s["note"].strip(), s  # a skip or a cut-off says why
        assert 0 <= s["seconds"] <= s["budget_s"] + 5
    assert steps["bench_compile"]["status"] == "skipped" and "dry run" in steps["bench_compile"]["note"]
    assert report["kit"]["dry_run"] and report["kit"]["shared"] == "ALAE_RT_SHARED"
    assert report["kit"]["seconds"] < report["kit"]["total_budget_s"]
    assert "GPU proof on" in stdout and "wrote " in stdout  # the summary comes last


def test_dry_run_steps_recorded_their_results(dry_run):
    _, _, report, _ = dry_run
    steps = {s["name"]: s for s in report["steps"]}
    for name in ("device", "tests", "parity", "bench", "kernels", "serve", "serve_sim", "profile"):
        assert steps[name]["status"] == "ran", steps[name]
    device = steps["device"]["result"]
    assert device["machine"]["device"] == "cpu" and device["datasheet"] is None  # no datasheet row for a CPU
    assert device["measured"]["copy_tb_s"] > 0 and device["measured"]["bf16_matmul_tflop_s"] > 0
    tests = steps["tests"]["result"]
    assert tests["tests"] and tests["counts"]["skipped"] == len(tests["tests"])  # gpu-marked: all skip on a CPU
    assert "tests/test_backend_triton.py" in tests["files"]
    # parity: read from the ALAE_RT_SHARED copy; fp32 exact to 1e-4, bf16 measurably off but within tolerance
    cases = {(c["backend"], c["dtype"]): c for c in steps["parity"]["result"]["cases"]}
    assert set(cases) == {("eager", "fp32"), ("eager", "bf16")} and all(c["passed"] for c in cases.values())
    assert all(e["max_abs_err"] <= 1e-4 for e in cases[("eager", "fp32")]["outputs"].values())
    recon = cases[("eager", "bf16")]["outputs"]["reconstruct_img"]
    assert recon["checked"] and 0 < recon["max_abs_err"] <= recon["tol"] == 0.1
    # bench: the baseline, eager and the labelled triton variants (options passed: CUDA graphs off; cuDNN's
    # convolutions up to 8x8), each within fp32's tolerance of the baseline
    rows = steps["bench"]["result"]["rows"]
    labels = ("official", "eager", "triton-nograph", "triton-cudnn8")
    assert {(r["backend"], r["op"]) for r in rows} == {(b, op) for b in labels for op in ("encode", "decode")}
    assert steps["bench"]["result"]["settings"]["variants"] == {"triton-nograph": ["triton", {"cuda_graphs": False}],
                                                                "triton-cudnn8": ["triton", {"cudnn_max_res": 8}]}
    for r in rows:
        assert math.isfinite(r["max_abs_err"]) and r["max_abs_err"] < 1e-4
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["median_ms"] / 1e3))
    # kernels: its own JSON's rows, held against the measured copy bandwidth
    kernels = steps["kernels"]["result"]
    assert kernels["rows"] and not kernels["from_printed_lines"]
    assert all(r["pct_of_measured_copy"] == pytest.approx(100 * r["gb_per_s"] / kernels["limits"]["measured_copy_gb_s"],
                                                          abs=0.06) for r in kernels["rows"])
    runs = steps["serve"]["result"]["runs"]
    assert [r["format"] for r in runs] == ["jpeg"] and runs[0]["levels"][0]["requests"] > 0
    # serve_sim: the simulated model on this host: one image a call over several server processes, eight per call,
    # then one a call to each format, each row with its CPU figures
    sim = steps["serve_sim"]["result"]
    assert [r["images_per_request"] for r in sim["runs"]] == [1, 8, 1] and sim["cores"] == os.cpu_count()
    assert [r["processes"] for r in sim["runs"]] == [2, 1, 1] and sim["runs"][0]["rows"][0]["requests"] > 0
    cases = [(r["case"], r["concurrency"]) for r in sim["runs"][2]["rows"]]
    assert cases == [("decode to jpeg", 2), ("decode to raw", 2), ("decode to png", 2)]
    assert all(r["images"] == 8 * r["requests"] > 0 and r["loop_cpu_ms_per_image"] >= 0
               for r in sim["runs"][1]["rows"])
    # profile: each case's time per call and its heaviest ops (aten ops on a CPU), in the markdown too
    profiled = steps["profile"]["result"]["cases"]
    assert [c["label"] for c in profiled] == ["triton-nograph fp32 decode batch 1", "eager fp32 decode batch 1",
                                              "official fp32 encode batch 1"]
    for c in profiled:
        assert c["ms_per_call"] > 0 and c["events_per_call"] > 10 and c["top"][0]["share"] > 0
        assert sum(t["share"] for t in c["top"]) <= 1.0001
    served = next(g for g in report["goals"] if g["goal"].startswith("serving JPEG out on this host"))
    assert served["met"] is not None and "per request" in served["measured"]
    latency = next(g for g in report["goals"] if g["goal"].startswith("decode latency"))
    assert latency["met"] is False and "(triton-" in latency["measured"]  # the interpreter is not fast


def test_datasheet_rows_by_device_name(gpu_check):
    card = gpu_check.datasheet_card
    assert card("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert card("NVIDIA H100 PCIe") == "H100 PCIe"
    assert card("NVIDIA H200") == "H200"
    assert card("NVIDIA A100-SXM4-80GB") is None
    sheet = gpu_check.DATASHEET
    assert (sheet["H100 SXM"]["bandwidth_tb_s"], sheet["H100 SXM"]["bf16_tflop_s"]) == (3.35, 989.0)
    assert (sheet["H100 PCIe"]["bandwidth_tb_s"], sheet["H100 PCIe"]["bf16_tflop_s"]) == (2.0, 756.0)
    assert (sheet["H200"]["bandwidth_tb_s"], sheet["H200"]["bf16_tflop_s"]) == (4.8, 989.0)


def test_goals_are_judged_from_the_bench_rows(gpu_check):
    def row(op, backend, dtype, batch, ms):
        return {"op": op, "backend": backend, "dtype": dtype, "batch": batch, "median_ms": ms,
                "images_per_s": batch / (ms / 1e3)}

    rows = [row("decode", "eager", "fp32", 32, 100.0), row("decode", "triton", "bf16", 32, 10.0),
            row("decode", "triton", "fp32", 32, 40.0), row("decode", "triton-nograph", "bf16", 1, 2.5),
            row("decode", "triton", "bf16", 1, 4.0)]
    report = {"steps": [{"name": "bench", "result": {"rows": rows}}, {
        "name": "serve", "result": {"runs": [{"format": "raw", "levels": [
            {"concurrency": 32, "images_per_s": 95.0, "baseline": {"images_per_s": 100.0}}]}]}}]}
    goals = {g["goal"]: g for g in gpu_check.goals(report)}
    assert goals["decode, bf16, batch 32: >= 2500 images/s"]["met"] is True  # 3200 images/s
    assert goals["encode, bf16, batch 32: >= 2500 images/s"]["met"] is None  # not measured
    assert goals["decode, batch 32: triton bf16 >= 3x eager fp32"]["met"] is True  # 10x
    assert goals["decode, batch 32: triton fp32 >= 3x eager fp32"]["met"] is False  # 2.5x
    assert goals["decode, batch 32: triton fp32 >= 3x eager fp32"]["measured"] == "2.50x"
    latency = goals["decode latency, batch 1: <= 3 ms (triton, best dtype)"]
    assert latency["met"] is True and "triton-nograph bf16" in latency["measured"]
    assert goals["serving (raw out), 32 callers: >= 90% of in-process"]["met"] is True


def test_a_step_past_its_budget_is_cut_off(gpu_check, tmp_path):
    # The device step imports torch and measures: far more than a third of a second.
    t0 = time.monotonic()
    step = gpu_check.run_step(gpu_check.STEPS[0], 0.3, tmp_path, gpu_check.child_env(True, None), True, None)
    assert step["status"] == "stopped" and "budget" in step["note"] and time.monotonic() - t0 < 20
    rc, text = gpu_check._run_streaming([sys.executable, "-c", "import time; print('begun', flush=True); "
                                         "time.sleep(60)"], timeout=2)
    assert rc is None and text == "begun\n"


def test_steps_that_time_nothing_run_side_by_side(gpu_check, tmp_path, monkeypatch):
    """tests and parity form one group, started together, each under its own budget plus the slack before them."""
    steps = {s.name: s for s in gpu_check.STEPS}
    groups = gpu_check._groups(gpu_check.STEPS)
    assert [[s.name for s in g] for g in groups][2] == ["tests", "parity"]
    assert len(groups) == len(gpu_check.STEPS) - 1
    assert [s.name for s in gpu_check._groups([steps["parity"], steps["bench"]])[0]] == ["parity"]  # alone: alone
    assert sum(max(s.budget_s for s in g) for g in groups) <= gpu_check.TOTAL_S - gpu_check.REPORT_RESERVE_S
    started = {}

    def fake_run_step(step, budget, state, env, dry_run, device):
        started[step.name] = (time.monotonic(), budget)
        time.sleep(0.5)
        return {"name": step.name, "title": step.title, "status": "ran", "note": "", "seconds": 0.5,
                "budget_s": budget, "result": {}, "log_tail": [], "log": ""}

    monkeypatch.setattr(gpu_check, "run_step", fake_run_step)
    args = gpu_check.parse_args(["--dry-run", "--steps", "tests,parity,bench", "--budget", "tests=20",
                                 "--budget", "parity=10"])
    report = gpu_check.run_all(args)
    assert abs(started["tests"][0] - started["parity"][0]) < 0.3 and started["bench"][0] - started["tests"][0] >= 0.5
    assert started["tests"][1] == pytest.approx(20, abs=0.5) and started["parity"][1] == pytest.approx(10, abs=0.5)
    assert [s["name"] for s in report["steps"] if s["status"] == "ran"] == ["tests", "parity", "bench"]


def test_serve_sim_keeps_the_cases_of_a_run_cut_off(gpu_check, tmp_path, monkeypatch):
    """serve_load writes its rows as it goes; a run killed at its share keeps them, and says how many it had."""
    def cut_off(cmd, timeout, env=None):
        out, tag = cmd[cmd.index("--out") + 1], cmd[cmd.index("--tag") + 1]
        row = {"case": "decode to jpeg", "concurrency": 128, "images_per_s": 2600.0, "server_cpu_ms_per_image": 4.0,
               "requests": 10}
        (tmp_path / "serve_sim").mkdir(exist_ok=True)
        (tmp_path / "serve_sim" / f"{tag}.json").write_text(json.dumps({"meta": {"server_processes": 4,
                                                                                   "partial": True}, "rows": [row]}))
        assert out == str(tmp_path / "serve_sim")
        return None, "cut off"

    monkeypatch.setattr(gpu_check, "_run_streaming", cut_off)
    monkeypatch.setattr(gpu_check, "_serve_env", lambda: {})
    ctx = gpu_check.Ctx("serve_sim", tmp_path, time.monotonic() + 100, False, "cuda")
    result = gpu_check.step_serve_sim(ctx)
    assert [r["processes"] for r in result["runs"]] == [4, 4, 4] and len(result["skipped"]) == 3
    assert "after 1 of 1 cases" in result["skipped"][0] and "after 1 of 3 cases" in result["skipped"][2]
    goal = next(g for g in gpu_check.goals({"steps": [{"name": "serve_sim", "result": result}]})
                if g["goal"].startswith("serving JPEG out"))
    assert goal["met"] is True and "4 server processes" in goal["measured"]


def test_run_bench_variants_deadline_and_rows_as_they_come():
    seen = []
    report = run_bench(config="tiny", backends=["eager"], dtypes=["fp32"], batches=[1], ops=["decode"],
                       device="cpu", min_reps=1, min_time_s=0.0, log=lambda m: None, on_row=seen.append,
                       variants={"eager-again": ("eager", {}), "eager-bogus": ("eager", {"bogus": 1}),
                                 "eager-bf16": ("eager", {}, ["bf16"])})
    assert [(r["backend"], r["dtype"]) for r in report["rows"]] == [("official", "fp32"), ("eager", "fp32"),
                                                                    ("eager-again", "fp32"), ("eager-bf16", "bf16")]
    assert seen == report["rows"]
    assert any(s.startswith("eager-bogus fp32:") and "bogus" in s for s in report["skipped"])  # options reach it
    late = run_bench(config="tiny", backends=["eager"], dtypes=["fp32"], batches=[1], ops=["decode"], device="cpu",
                     log=lambda m: None, deadline=time.monotonic() - 1)
    assert late["rows"] == [] and late["skipped"] == ["official fp32: time budget spent",
                                                      "eager fp32: time budget spent"]


def test_shared_folder_follows_the_environment(tmp_path):
    code = "import helpers; print(helpers.OFFICIAL)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", capture_output=True, text=True,
                         env=dict(os.environ, ALAE_RT_SHARED=str(tmp_path)), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "fixtures" / "official")


def test_a_backend_that_breaks_does_not_stop_the_others(gpu_check, tmp_path, monkeypatch):
    """An error run_bench does not catch (a kernel that does not compile, say) ends that backend's cases; the
    backends after it are measured in a new call, whose second baseline is not kept."""
    import alae_rt.backends

    class Broken:
        name = "broken"

        def __init__(self, model, device):
            pass

        def encode(self, x):
            raise ValueError("this kernel does not compile")

        decode = encode

    monkeypatch.setitem(alae_rt.backends._BACKENDS, "gpu-check-broken", Broken)
    monkeypatch.setitem(gpu_check.DRY_BENCH_PLANS, "bench",
                        (["eager"], {"broken": ("gpu-check-broken", {}), "eager-after": ("eager", {})}))
    ctx = gpu_check.Ctx("bench", tmp_path, time.monotonic() + 120, True, "cpu")
    result = gpu_check.step_bench(ctx)
    assert result["failed"].startswith("broken: ValueError: this kernel does not compile")
    assert sorted((r["backend"], r["op"]) for r in result["rows"]) == sorted(
        (b, op) for b in ("official", "eager", "eager-after") for op in ("encode", "decode"))
    kept = [json.loads(line) for line in (tmp_path / "bench.partial.jsonl").read_text().splitlines()]
    assert kept == result["rows"]


def test_a_failure_is_printed_when_it_happens_and_read_back(gpu_check, tmp_path):
    """The tests step's pytest prints each failure's traceback at once (tests/conftest.py's hook, switched on by
    ALAE_RT_FAILURES_AT_ONCE): the kit reads the test, the phase and the assertion back from that output, so a
    run cut off at its budget, with no summary and no junit file, still says what failed and why."""
    (tmp_path / "test_sample.py").write_text(
        "def test_passes():\n    assert True\n\n\ndef test_fails():\n    limit = 1e-5\n    assert 3e-3 <= limit\n")
    env = dict(os.environ, ALAE_RT_FAILURES_AT_ONCE="1", PYTHONPATH=str(ROOT / "tests"))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                          "--tb=short", "test_sample.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    failures = gpu_check.printed_failures(res.stdout + res.stderr)
    assert [(f["id"], f["when"]) for f in failures] == [("test_sample.py::test_fails", "call")]
    assert "assert 3e-3 <= limit" in failures[0]["tail"]
    quiet = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                            "test_sample.py"], cwd=tmp_path, env={**env, "ALAE_RT_FAILURES_AT_ONCE": "0"},
                           capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 1 and gpu_check.printed_failures(quiet.stdout + quiet.stderr) == []


# ---- the convolution kernels' window (benchmarks/conv_window.py) and their ahead-of-time build report ----------


def test_conv_window_dry_run_writes_every_section_as_it_goes(tmp_path):
    """The window script on the CPU (interpreter, tiny shapes): a row per measurement in the .jsonl, every section
    present and none failed, the markdown's tables from them."""
    script = ROOT / "benchmarks" / "conv_window.py"
    res = subprocess.run([sys.executable, str(script), "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (jsonl,) = tmp_path.glob("conv_window_dry_*.jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]
    sections = {r["section"] for r in rows}
    assert sections == {"versions", "cudnn", "sweep", "e2e", "profile"}, sections
    sweep = [r for r in rows if r["section"] == "sweep" and "ms" in r]
    assert {r["mode"] for r in sweep} == {"same", "up", "down"} and all(r["ms"] > 0 for r in sweep)
    e2e = {(r["backend"], r["op"]) for r in rows if r["section"] == "e2e" and "images_per_s" in r}
    assert ("triton-gemm", "encode") in e2e or ("triton-gemm", "decode") in e2e, e2e
    md = jsonl.with_suffix(".md").read_text()
    assert "Per-layer choice" in md and "End to end" in md and "## Profile: decode" in md


def test_conv_aot_builds_a_config_for_sm90_and_reads_its_resources(tmp_path):
    """One modulated_conv config built for sm_90 on this CPU (--smoke): its shared memory, registers and spills are
    read, and the tensor-core instruction is Hopper's wgmma. (Outside the interpreter: it builds nothing.)"""
    pytest.importorskip("triton")
    script = ROOT / "benchmarks" / "conv_aot.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (path,) = tmp_path.glob("conv_aot_sm90_bf16_*.json")
    (row,) = json.loads(path.read_text())["rows"]
    assert row["built"] and (row["mode"], row["cin"], row["h"]) == ("same", 16, 1024), row
    assert 0 < row["shared_bytes"] <= 232_448 and 0 < row["registers"] <= 255
    assert row["spill_stores_bytes"] == 0 and row["wgmma"] and row["launches"]
    assert "| same | 16 | 16 | 1024 |" in path.with_suffix(".md").read_text()
    res = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                         env=dict(env, TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "TRITON_INTERPRET is set" in res.stderr
