"""The GPU proof (issue 14): one prepared command that runs every GPU path of alae-rt on the machine it is on,
bounded to 8 minutes, and records what it saw.

    python benchmarks/gpu_check.py              # on a CUDA machine (`make gpu-check PY=python3`)
    python benchmarks/gpu_check.py --dry-run    # the kit's own code on the CPU, tiny models (`make gpu-check DRY=1`)

Each step runs in a process of its own under a time budget: it stops starting new cases near the end of it and
is cut off at it, keeping what it measured; time a step leaves unused passes to the steps after it. A step
whose package or data is missing is skipped with a note, not failed.
  1. device: the card, driver, torch/triton versions; the card's datasheet limits (memory bandwidth, dense
     bf16) beside measured ones (a device-to-device copy, a bf16 matrix product);
  2. serve_sim: the server over a simulated model that is not the limit, on this host's cores (JPEG, PNG, RAW
     out; one and eight images per call; one a call over four server processes): CPU-ms and event-loop ms per
     image, images/s;
  3. tests: the gpu-marked tests, four at once, each failure's traceback kept as it happens; beside them
     parity: the official fixtures on the device for eager, triton and compile (fp32 within 1e-4, fp16/bf16
     within the tolerances the tests state);
  4. bench: ffhq-1024 encode and decode (random weights) at batch 1, 8 and 32, the official order (the
     baseline), eager and triton, fp32/bf16/fp16, with and without CUDA graphs: images/s, ms per batch, peak
     GPU memory, max error against eager fp32 (alae_rt.bench.run_bench);
  5. serve: benchmarks/serve_load.py on the device with the ffhq-1024 model, 32 callers, JPEG and RAW out;
     kernels: benchmarks/bench_kernels.py, its GB/s and TFLOP/s as fractions of step 1's limits;
     profile: torch.profiler on the slowest measured paths (the top kernels, how busy they keep the GPU);
     bench_compile: step 4 for torch.compile (last: the slowest to build);
  6. the report: JSON + markdown + one plot in benchmarks/results/, tagged with device, date and commit, and
     a copy (with the steps' logs) in the folder named by ALAE_RT_RESULTS_DIR when it is set.
Fixtures are read from ../shared, or where that is missing from the kit's copy in .gpu-kit/shared
(`make gpu-kit`), through ALAE_RT_SHARED. Serving needs grpcio-health-checking and grpcio-reflection: where
they are not installed, pure-Python wheels in .gpu-kit/wheels are put on the path of that step; the fast codecs
(fpng, pyspng, simplejpeg), compiled wheels in .gpu-kit/wheels/binary, are installed into .gpu-kit/site (both:
`make gpu-kit SERVE_WHEELS=1`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DRY_RESULTS = ROOT / "out" / "gpu-check-dry"
KIT = ROOT / ".gpu-kit"
TOTAL_S = 480  # the whole run, the report included
REPORT_RESERVE_S = 10  # kept back from the steps for writing the report


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    budget_s: float  # on the GPU
    dry_budget_s: float  # in the CPU dry run: a cap, not a target


# In the order they run. What the first GPU runs taught (H200, 2026-11-27): Triton's and torch.compile's builds
# take most of a step's time, so the steps that build nothing (serve_sim) or little go first and torch.compile's
# timing, the slowest to build and the least asked for, last.
STEPS = (
    Step("device", "device, versions, bandwidth and bf16 limits", 15, 60),
    Step("serve_sim", "the server on this host's cores over a simulated model: JPEG, PNG, RAW out", 50, 45),
    Step("tests", "the gpu-marked tests", 110, 90),
    Step("parity", "official fixtures on the device: eager, triton, compile", 90, 60),
    Step("bench", "encode/decode timing: official order, eager, triton with and without CUDA graphs", 80, 90),
    Step("serve", "serving load (benchmarks/serve_load.py): 32 callers, JPEG and RAW out", 80, 90),
    Step("kernels", "kernel benchmark (benchmarks/bench_kernels.py) against the limits", 45, 60),
    Step("profile", "where the time goes: torch.profiler on the slowest measured paths", 40, 30),
    Step("bench_compile", "encode/decode timing: compile with and without CUDA graphs", 45, 30),
)
# Steps that time nothing run side by side, each under its own budget: the GPU and the host's 16 cores have room
# for both, their checks do not depend on speed, and the run gains the shorter one's time (H200: tests cut off at
# 85 s cold, 46 s with Triton's cache filled; parity cut off at 69 s before reaching compile). The tests have more
# to build since (a server on the GPU for each backend; a kernel build per resolution).
TOGETHER = (("tests", "parity"),)

# Datasheet figures (dense, no sparsity): memory bandwidth TB/s and TFLOP/s. Leads, not ceilings: the device
# step measures a copy and a bf16 matrix product beside them.
DATASHEET = {
    "H100 SXM": {"bandwidth_tb_s": 3.35, "bf16_tflop_s": 989.0, "tf32_tflop_s": 494.0, "fp32_tflop_s": 67.0},
    "H100 PCIe": {"bandwidth_tb_s": 2.0, "bf16_tflop_s": 756.0, "tf32_tflop_s": 378.0, "fp32_tflop_s": 51.0},
    "H200": {"bandwidth_tb_s": 4.8, "bf16_tflop_s": 989.0, "tf32_tflop_s": 494.0, "fp32_tflop_s": 67.0},
}


def datasheet_card(device_name: str) -> str | None:
    """The DATASHEET entry for a device name as torch or nvidia-smi gives it ("NVIDIA H100 80GB HBM3")."""
    name = device_name.upper()
    if "H200" in name:
        return "H200"
    if "H100" in name:
        return "H100 PCIe" if "PCIE" in name else "H100 SXM"
    return None


# fp16/bf16 tolerances the tests state: max abs error of images in [-1, 1] against the fp32 reference (latents:
# times max(1, max |w|)). eager and compile: tests/test_official_parity.py::test_low_precision_runs_close_to_fp32;
# triton: tests/test_backend_triton.py TOL. fp32: tests/helpers.py PARITY_TOL (assert_close, 1e-4 / 1e-4).
LOW_PRECISION_TOL = {"eager": {"fp16": 0.05, "bf16": 0.1}, "compile": {"fp16": 0.05, "bf16": 0.1},
                     "triton": {"fp16": 3e-2, "bf16": 1.5e-1}}
FP32_TOL = 1e-4
GOAL_IMAGES_PER_S = 2500  # bf16, batch 32, encode and decode; and served JPEG in the GPU regime
SERVE_FORMATS = ("jpeg", "raw")
# The simulated model of step serve_sim: fast enough not to be the limit (32 images in 4.2 ms: 7,600 images/s), so
# that what is measured is the server and this host's cores.
SIM_MODEL = "0.1,1"
# (response formats, images per request, server processes, caller counts), the goals' first: one process at one
# image a call is bound by its event loop (885-1,000 JPEG images/s on the H200 host), so four processes share the
# host's cores past that; or callers send 8 images a call. Each case costs ~5 s beyond its measured seconds (the
# callers' connections and warm-up), so the runs stay few.
SIM_RUNS = (("jpeg", 1, 4, "128"), ("jpeg", 8, 1, "32"), ("jpeg,raw,png", 1, 1, "32"))


# ---- the steps (each runs in a worker process: `gpu_check.py --worker NAME`) -------------------------------------


class Skip(Exception):
    """A step that cannot run here (no device, a missing package or data): skipped with this note."""


@dataclass
class Ctx:
    """What a worker knows: its name, the run's scratch folder, its deadline, dry run or not, the device."""

    name: str
    state: Path
    deadline: float  # time.monotonic() by which the step stops starting new work
    dry_run: bool
    device: str  # "cuda" or "cpu"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def keep(self, record: dict[str, Any]) -> None:
        """Append a measured record to the step's partial results (kept if the step is cut off)."""
        with open(self.state / f"{self.name}.partial.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def previous(self, step: str) -> dict[str, Any]:
        """An earlier step's result ({} if it left none)."""
        path = self.state / f"{step}.json"
        if not path.exists():
            return {}
        return json.loads(path.read_text()).get("result") or {}


def step_device(ctx: Ctx) -> dict[str, Any]:
    import torch

    from alae_rt.bench import machine_info, median_time

    dev = torch.device(ctx.device)
    info = machine_info(dev)
    out: dict[str, Any] = {
        "machine": info,
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "triton": info["versions"].get("triton"),
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        out["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                      "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
                      "l2_mb": round(getattr(props, "L2_cache_size", 0) / 1e6, 1)}
        out["driver"] = _nvidia_smi("driver_version")
    card = datasheet_card(info["device_name"])
    out["datasheet"] = {"card": card, **DATASHEET[card]} if card else None
    # A copy of a buffer well past the L2 (bytes read + bytes written), and a square bf16 matrix product on random
    # data, as METHOD.md measures the two ceilings.
    nbytes, n = (2 << 30, 8192) if dev.type == "cuda" else (32 << 20, 256)
    reps = 10 if dev.type == "cuda" else 3
    pair = [torch.empty(nbytes, dtype=torch.uint8, device=dev).random_(), torch.empty(nbytes, dtype=torch.uint8,
                                                                                     device=dev)]
    sec = median_time(lambda: pair[1].copy_(pair[0]), dev, reps)
    out["measured"] = {"copy_bytes": 2 * nbytes, "copy_tb_s": 2 * nbytes / sec / 1e12}
    pair.clear()
    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    sec = median_time(lambda: a @ b, dev, reps)
    out["measured"].update({"matmul_n": n, "bf16_matmul_tflop_s": 2 * n**3 / sec / 1e12})
    print(f"{info['device_name']}: copy {out['measured']['copy_tb_s']:.2f} TB/s, bf16 matmul "
          f"{out['measured']['bf16_matmul_tflop_s']:.1f} TFLOP/s; datasheet {out['datasheet']}")
    if not ctx.dry_run and dev.type != "cuda":
        raise RuntimeError(f"no CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees none")
    return out


def _nvidia_smi(field: str) -> str | None:
    try:
        res = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else None


def step_tests(ctx: Ctx) -> dict[str, Any]:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                   if "mark.gpu" in p.read_text())
    if not files:
        raise Skip("no gpu-marked tests found under tests/")
    xml = ctx.state / "tests.xml"
    # -v: a line per test as it ends, so a run cut off at the budget still says which failed
    cmd = [sys.executable, "-m", "pytest", "-v", "-rA", "-p", "no:cacheprovider", "-m", "gpu",
           f"--junitxml={xml}", *files]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append(f"--timeout={max(30, int(ctx.left()))}")
    if not ctx.dry_run and importlib.util.find_spec("xdist") is not None:
        # Triton's and torch.compile's builds are host work: four at once on the host's cores, one GPU between them
        cmd += ["-n", "4"]
    # tests/conftest.py prints each failure's traceback as it happens: kept even when the budget cuts the run off
    rc, text = _run_streaming(cmd + ["--tb=short"], ctx.left() + 5, {**os.environ, "ALAE_RT_FAILURES_AT_ONCE": "1"})
    tests = _junit(xml) if xml.exists() else []
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    out = {"command": " ".join(["python"] + cmd[1:]).replace(str(ctx.state), "<state>"), "files": files,
           "exit_status": rc, "counts": counts, "tests": tests}
    if failures := printed_failures(text):
        out["failures"] = failures
    if rc is None:
        out["stopped"] = "cut off at the step's budget: " + " | ".join(text.strip().splitlines()[-2:])
    elif rc not in (0, 5) or counts["failed"] or counts["error"]:  # 5: nothing collected
        out["failed"] = f"{counts['failed']} failed, {counts['error']} errors (pytest exit status {rc})"
    return out


def printed_failures(text: str) -> list[dict[str, str]]:
    """The failures tests/conftest.py printed (ALAE_RT_FAILURES_AT_ONCE=1), each with its traceback's last lines:
    the assertion or the exception and the code that raised it."""
    seen = re.findall(r"^--- FAILURE (\S+) \((\w+)\):\n(.*?)^--- END$", text, flags=re.MULTILINE | re.DOTALL)
    return [{"id": nodeid, "when": when, "tail": "\n".join(body.strip().splitlines()[-12:])}
            for nodeid, when, body in seen]


def _junit(path: Path) -> list[dict[str, Any]]:
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                text = (node.get("message") or node.text or "").strip()
                message = text.splitlines()[0][:300] if text else ""
                break
        tests.append({"id": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": round(float(case.get("time") or 0), 2), "message": message})
    return tests


def step_parity(ctx: Ctx) -> dict[str, Any]:
    import torch

    from alae_rt import Runtime

    shared = os.environ.get("ALAE_RT_SHARED") or str(ROOT.parent / "shared")
    official = Path(shared) / "fixtures" / "official"
    fixtures = ["gray32"] if ctx.dry_run else ["gray32", "rgb128"]
    missing = [f for f in fixtures if not (official / f / "reference.pt").exists()]
    if missing:
        raise Skip(f"no official fixtures in {official} (run `make gpu-kit` beside ../shared)")
    backends = ["eager"] if ctx.dry_run else ["eager", "triton", "compile"]
    dtypes = ["fp32", "bf16"] if ctx.dry_run else ["fp32", "fp16", "bf16"]
    # Every backend in fp32 first (the exact check; the H200's first runs spent the budget before compile was
    # reached), then the low precisions, backend by backend.
    order = [(b, d) for d in dtypes[:1] for b in backends] + [(b, d) for b in backends for d in dtypes[1:]]
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    refs = {f: torch.load(official / f / "reference.pt", map_location="cpu", weights_only=True) for f in fixtures}
    cases, skipped = [], []
    for backend, dtype in order:
        for fixture in fixtures:
            if ctx.left() < 0:
                skipped.append(f"{backend} {dtype} {fixture}: time budget spent")
                continue
            t0 = time.monotonic()
            try:
                rt = Runtime.load(official / fixture / "checkpoint.pth", device=ctx.device, dtype=dtype,
                                  backend=backend)
                errors = _parity_errors(rt, refs[fixture], dtype, backend)
            except Exception as exc:  # a backend that breaks here is a finding, the other cases still run
                case = {"backend": backend, "dtype": dtype, "fixture": fixture, "passed": False,
                        "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
            else:
                case = {"backend": backend, "dtype": dtype, "fixture": fixture,
                        "passed": all(e["passed"] for e in errors.values() if e["checked"]), "outputs": errors}
                fallback = getattr(rt.backend, "fallback_reason", None)
                if fallback:  # compile fell back to eager: its outputs are eager's, and compile did not run
                    case.update(passed=False, error=f"torch.compile fell back to eager: {fallback}")
            case["seconds"] = round(time.monotonic() - t0, 2)
            cases.append(case)
            ctx.keep(case)
            worst = max((e["max_abs_err"] for e in case.get("outputs", {}).values()), default=float("nan"))
            print(f"{backend} {dtype} {fixture}: {'ok' if case['passed'] else 'FAILED'} (max abs err {worst:.2e}, "
                  f"{case['seconds']} s){' ' + case['error'] if 'error' in case else ''}", flush=True)
    out: dict[str, Any] = {"device": ctx.device, "fixtures": fixtures, "cases": cases, "skipped": skipped,
                           "tolerances": {"fp32": FP32_TOL, **{b: t for b, t in LOW_PRECISION_TOL.items()}}}
    bad = [f"{c['backend']} {c['dtype']} {c['fixture']}" for c in cases if not c["passed"]]
    if bad:
        out["failed"] = "outside tolerance or broken: " + ", ".join(bad)
    return out


def _parity_errors(rt, ref: dict, dtype: str, backend: str) -> dict[str, dict[str, Any]]:
    """Each output of a fixture against the official one: max abs error, the tolerance, pass. fp32: every output
    as assert_close(atol=rtol=1e-4); fp16/bf16: what the tests check, the reconstruction (max abs) and w
    (max abs, relative to max(1, max |w|)); the other outputs' errors are recorded unchecked."""
    import torch

    with torch.inference_mode():
        outputs = {
            "encode_w": rt.encode(ref["x"]),
            "encode_d_logit": rt.discriminate(ref["encode_w"]),
            "mapped_w": rt.map(ref["z"]),
            "reconstruct_img": rt.decode(ref["encode_w"], noise=ref["reconstruct_noise"]),
            "generate_img": rt.generate(z=ref["z"], truncation_psi=ref["truncation_psi"],
                                        truncation_cutoff=ref["truncation_cutoff"], noise=ref["generate_noise"]),
            "mix_img": rt.mix(ref["encode_w"], ref["mapped_w"], ref["mix_cutoff"], noise=ref["mix_noise"]),
        }
    errors = {}
    for key, out in outputs.items():
        want = ref[key].float()
        diff = (out.float().cpu() - want).abs()
        err = float(diff.max())
        if dtype == "fp32":
            tol = FP32_TOL
            passed = bool((diff <= FP32_TOL + FP32_TOL * want.abs()).all())
            checked = True
        else:
            base = LOW_PRECISION_TOL[backend][dtype]
            tol = base * max(1.0, float(want.abs().max())) if key == "encode_w" else base
            checked = key in ("encode_w", "reconstruct_img")
            passed = err <= tol
        errors[key] = {"max_abs_err": err, "tol": tol, "checked": checked, "passed": bool(passed and err == err)}
    return errors


# Step 3: (backends by name, {label: (backend, options)}) measured in one run_bench call, the baseline first.
BENCH_PLANS = {
    # triton-tf32: fp32 like for like with eager and the official order, whose convolutions run in TF32 (cuDNN's
    # default, which the timings keep); the triton backend's own fp32 is exact.
    # triton-cudnnR: the 3x3 convolutions up to resolution R through cuDNN (modulate + conv2d + act_stats), to find
    # the layers where cuDNN beats the fused kernel (on the H200 the fused kernel ran at 2-7% of the bf16 rate)
    "bench": (["eager", "triton"], {"triton-nograph": ("triton", {"cuda_graphs": False}),
                                    "triton-tf32": ("triton", {"allow_tf32": True}, ("fp32",)),
                                    "triton-cudnn64": ("triton", {"cudnn_max_res": 64}, ("bf16",)),
                                    "triton-cudnn1024": ("triton", {"cudnn_max_res": 1024}, ("bf16",))}),
    "bench_compile": (["compile"], {"compile-graphs": ("compile", {"mode": "reduce-overhead"})}),
}
DRY_BENCH_PLANS = {
    "bench": (["eager"], {"triton-nograph": ("triton", {"cuda_graphs": False}),
                          "triton-cudnn8": ("triton", {"cudnn_max_res": 8})}),
    "bench_compile": None,  # torch.compile builds for minutes on a CPU
}


def step_bench(ctx: Ctx) -> dict[str, Any]:
    plan = (DRY_BENCH_PLANS if ctx.dry_run else BENCH_PLANS)[ctx.name]
    if plan is None:
        raise Skip("dry run: torch.compile takes minutes to build on a CPU")
    import torch

    from alae_rt.bench import BASELINE, run_bench

    backends, variants = plan
    if ctx.dry_run:
        settings = {"config": "tiny", "batches": [1], "dtypes": ["fp32"], "min_reps": 1, "min_time_s": 0.0,
                    "max_reps": 1}
    else:
        settings = {"config": "ffhq-1024", "batches": [1, 8, 32], "dtypes": ["fp32", "bf16", "fp16"],
                    "min_reps": 5, "min_time_s": 0.3, "max_reps": 20}
    labels = [BASELINE, *backends, *variants]
    per_dtype = len(settings["batches"]) * 2  # cases per (label, dtype): batches x (encode, decode)
    per_label = {lb: (1 if lb == BASELINE else len(variants[lb][2]) if len(variants.get(lb, ())) > 2
                      else len(settings["dtypes"])) * per_dtype for lb in labels}
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    failures: list[str] = []
    report: dict[str, Any] = {}
    caught: list[warnings.WarningMessage] = []
    done: dict[str, int] = {}  # cases measured or skipped per label in the current run_bench call
    calls = 0  # run_bench calls begun: after a backend breaks, the rest run in a new call, the baseline again

    def keep(row: dict[str, Any]) -> None:
        done[row["backend"]] += 1
        if row["backend"] != BASELINE or calls == 1:  # the first call's baseline is the one kept
            rows.append(row)
            ctx.keep(row)
        print(f"{row['op']:6s} {row['backend']:15s} {row['dtype']} batch {row['batch']:3d}: "
              f"{row['median_ms']:9.3f} ms {row['images_per_s']:9.1f} images/s, max err {row['max_abs_err']:.1e}",
              flush=True)

    def note(message: str) -> None:
        print(message, flush=True)
        if message.startswith("skipped "):
            text = message[len("skipped "):]
            skipped.append(text)
            label = text.split(" ", 1)[0]
            if label in done:
                done[label] += 1 if " batch " in text else per_dtype

    todo = labels[1:]
    while todo:
        done.update(dict.fromkeys(labels, 0))
        calls += 1
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                try:
                    # [BASELINE] when only variants are left: no backends would mean all of them
                    report = run_bench(config=settings["config"],
                                       backends=[b for b in todo if b in backends] or [BASELINE],
                                       variants={k: v for k, v in variants.items() if k in todo},
                                       dtypes=settings["dtypes"], batches=settings["batches"],
                                       ops=("encode", "decode"), device=ctx.device, min_reps=settings["min_reps"],
                                       min_time_s=settings["min_time_s"], max_reps=settings["max_reps"],
                                       deadline=ctx.deadline, on_row=keep, log=note)
                finally:
                    caught += seen
            break
        except Exception as exc:  # one backend broke (e.g. a kernel that does not compile): the next ones still run
            broken = next((lb for lb in todo if done[lb] < per_label[lb]), None)
            failures.append(f"{broken}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            print(f"failed {failures[-1]}\n{traceback.format_exc()}", flush=True)
            if broken is None or ctx.left() < 0:
                break
            todo = todo[todo.index(broken) + 1:]
    tf32 = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    out: dict[str, Any] = {
        "settings": {**settings, "ops": ["encode", "decode"], "backends": [BASELINE, *backends],
                     "variants": {k: [v[0], v[1], *([list(v[2])] if len(v) > 2 else [])] for k, v in variants.items()},
                     "tf32": tf32,
                     "cuda_graphs": "triton: on unless cuda_graphs=False; compile: mode=reduce-overhead"},
        "model": report.get("model"), "rows": rows, "skipped": skipped,
    }
    # compile falls back to eager (with a warning) when it cannot build: its rows would then time eager
    fallbacks = sorted({str(w.message)[:300] for w in caught if "torch.compile failed" in str(w.message)})
    if fallbacks:
        out["compile_fallbacks"] = fallbacks
        failures += [f"torch.compile fell back to eager: {fallbacks[0]}"]
    if failures:
        out["failed"] = "; ".join(failures)
    return out


def _script_flags(script: Path, env: dict[str, str] | None = None) -> set[str]:
    """The long options a script's --help names: the kit passes only those (the scripts' CLIs move on)."""
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{script.name} --help failed: {(res.stderr or res.stdout).strip()[-500:]}")
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", res.stdout))


def _run_streaming(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Run a command, echoing its output; (exit status or None when cut off at `timeout`, its output)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines, ""), daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        rc = None
    reader.join(10)
    return rc, "".join(lines)


def _pump(stream, lines: list[str], prefix: str) -> None:
    """Echo a child's output line by line (a remote run's log shows progress) and keep it."""
    for line in iter(stream.readline, ""):
        lines.append(line)
        print(prefix + line, end="", flush=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """End a process we started in its own session, and what it started (a server, pytest's children)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


KERNEL_LINE = re.compile(r"^(?P<label>\S.*?)\s+(?P<ms>[\d.]+) ms\s+(?P<gb_per_s>[\d.]+) GB/s")


def step_kernels(ctx: Ctx) -> dict[str, Any]:
    script = ROOT / "benchmarks" / "bench_kernels.py"
    if not script.exists():
        raise Skip(f"{script.relative_to(ROOT)} is not there")
    flags = _script_flags(script)
    out_dir = ctx.state / "kernels"
    cmd = [sys.executable, str(script.relative_to(ROOT))]
    for flag, value in (("--device", ctx.device), ("--out", str(out_dir)),
                        # compile's references build for minutes at the full shapes: Triton against eager torch
                        ("--impls", "triton,unfused,torch" if ctx.device == "cuda" else "torch"),
                        ("--dtypes", "fp32,bf16" if ctx.device == "cuda" else "fp32")):
        if flag in flags:
            cmd += [flag, value]
    if ctx.dry_run:
        cmd += [f for f in ("--smoke",) if f in flags] + (["--reps", "1"] if "--reps" in flags else [])
    rc, text = _run_streaming(cmd, ctx.left())
    limits = _limits(ctx.previous("device"))
    rows = []
    for path in sorted(out_dir.glob("*.json")) if out_dir.exists() else []:
        data = json.loads(path.read_text())
        rows += data.get("rows", []) if isinstance(data, dict) else []
    partial = not rows
    if partial:  # cut off (or no JSON written): the lines it printed
        rows = [{k: (float(v) if k != "label" else v) for k, v in m.groupdict().items()}
                for m in map(KERNEL_LINE.match, text.splitlines()) if m]
    for row in rows:
        _against_limits(row, limits)
    out = {"command": " ".join(["python", *cmd[1:]]).replace(str(ctx.state), "<state>"), "exit_status": rc,
           "limits": limits, "rows": rows, "from_printed_lines": partial}
    if rc is None:
        out["stopped"] = "cut off at the step's budget; rows are what it had printed"
    elif rc != 0:
        out["failed"] = f"exit status {rc}: {text.strip().splitlines()[-1] if text.strip() else ''}"
    return out


def _limits(device: dict[str, Any]) -> dict[str, Any]:
    """Step 1's figures the kernels are held against: measured copy bandwidth, datasheet bandwidth and rates."""
    sheet = device.get("datasheet") or {}
    measured = device.get("measured") or {}
    return {"card": sheet.get("card"), "measured_copy_gb_s": measured.get("copy_tb_s", 0) * 1e3 or None,
            "datasheet_gb_s": sheet.get("bandwidth_tb_s", 0) * 1e3 or None,
            "measured_bf16_tflop_s": measured.get("bf16_matmul_tflop_s"),
            "datasheet_tflop_s": {"bf16": sheet.get("bf16_tflop_s"), "fp16": sheet.get("bf16_tflop_s"),
                                  "fp32": sheet.get("fp32_tflop_s")}}


def _against_limits(row: dict[str, Any], limits: dict[str, Any]) -> None:
    gbs, tfs = row.get("gb_per_s"), row.get("tflop_per_s")
    if gbs and limits["measured_copy_gb_s"]:
        row["pct_of_measured_copy"] = round(100 * gbs / limits["measured_copy_gb_s"], 1)
    if gbs and limits["datasheet_gb_s"]:
        row["pct_of_datasheet_bandwidth"] = round(100 * gbs / limits["datasheet_gb_s"], 1)
    peak = limits["datasheet_tflop_s"].get(row.get("dtype", ""))
    if tfs and peak:
        row["pct_of_datasheet_tflop_s"] = round(100 * tfs / peak, 1)


def step_serve(ctx: Ctx) -> dict[str, Any]:
    script = ROOT / "benchmarks" / "serve_load.py"
    if not script.exists():
        raise Skip(f"{script.relative_to(ROOT)} is not there")
    env = _serve_env()
    flags = _script_flags(script, env)
    if ctx.dry_run:
        model = {"--preset": "tiny", "--device": "cpu", "--dtype": "fp32", "--backend": "eager",
                 "--concurrency": "2", "--requests": "6", "--duration": "1", "--warmup": "1",
                 "--baseline-seconds": "0.5", "--threads": "1"}
        formats = SERVE_FORMATS[:1]
    else:
        model = {"--preset": "ffhq-1024", "--device": "cuda", "--dtype": "bf16", "--backend": "auto",
                 "--concurrency": "32", "--requests": "4000", "--warmup": "8", "--baseline-seconds": "5"}
        formats = SERVE_FORMATS
    runs, skipped, failures = [], [], []
    for i, fmt in enumerate(formats):
        share = ctx.left() / (len(formats) - i)
        if share < (5 if ctx.dry_run else 30):
            skipped.append(f"{fmt}: time budget spent")
            continue
        out_dir, tag = ctx.state / "serve", f"serve_{fmt}"
        # Load for a third of this format's share: the server's start and warm-up and the in-process baseline
        # take the rest.
        args = {**model, "--format": fmt, "--out": str(out_dir), "--tag": tag}
        if not ctx.dry_run:
            args["--duration"] = f"{max(5.0, share / 3):.0f}"
        cmd = [sys.executable, str(script.relative_to(ROOT))] + [x for k, v in args.items() if k in flags
                                                                 for x in (k, v)]
        rc, text = _run_streaming(cmd, share, env)
        path = out_dir / f"{tag}.json"
        if rc == 0 and path.exists():
            data = json.loads(path.read_text())
            runs.append({"format": fmt, "command": " ".join(["python", *cmd[1:]]).replace(str(ctx.state), "<state>"),
                         "meta": data.get("meta"), "levels": data.get("levels"), "goals": data.get("goals")})
            ctx.keep(runs[-1])
        elif rc is None:
            skipped.append(f"{fmt}: cut off at the step's budget")
        else:
            failures.append(f"{fmt}: exit status {rc}: {' | '.join(text.strip().splitlines()[-3:])}")
    out: dict[str, Any] = {"runs": runs, "skipped": skipped}
    if failures:
        out["failed"] = "; ".join(failures)
    return out


def step_serve_sim(ctx: Ctx) -> dict[str, Any]:
    """benchmarks/serve_load.py --simulate-model on this host: the server's own CPU cost per image and its ceiling,
    with a model that is not the limit - what this many cores serve beside a GPU."""
    script = ROOT / "benchmarks" / "serve_load.py"
    env = _serve_env()
    runs, skipped = [], []
    for i, (formats, per_request, processes, levels) in enumerate(SIM_RUNS):
        share = ctx.left() / (len(SIM_RUNS) - i)
        if share < (5 if ctx.dry_run else 15):
            skipped.append(f"{formats}, {per_request} per request, {processes} processes: time budget spent")
            continue
        levels = "2" if ctx.dry_run else levels
        cases = len(formats.split(",")) * len(levels.split(","))
        tag = f"serve_sim_{i}"
        args = ["--simulate-model", SIM_MODEL, "--formats", formats, "--encode-from", "",
                "--images-per-request", str(per_request), "--concurrency", levels,
                "--requests", "4" if ctx.dry_run else "100000", "--warmup", "1" if ctx.dry_run else "4",
                # the server's start and warm-up take a few seconds of the share
                "--duration", f"{max(1.0, (share - 8) / cases):.1f}", "--out", str(ctx.state / "serve_sim"),
                "--tag", tag, "--server-processes", str(min(processes, 2) if ctx.dry_run else processes)]
        cmd = [sys.executable, str(script.relative_to(ROOT)), *args]
        rc, text = _run_streaming(cmd, share, env)
        path = ctx.state / "serve_sim" / f"{tag}.json"
        data = json.loads(path.read_text()) if (rc == 0 or rc is None) and path.exists() else None
        if data and data["rows"]:  # all its cases, or (cut off) the ones it had measured
            runs.append({"images_per_request": per_request, "processes": data["meta"].get("server_processes", 1),
                         "meta": data["meta"], "rows": data["rows"],
                         "command": shlex.join(["python", *cmd[1:]]).replace(str(ctx.state), "<state>")})
            ctx.keep(runs[-1])
        if rc is None:
            skipped.append(f"{formats}, {per_request} per request, {processes} processes: cut off at the step's "
                           f"budget after {len(data['rows']) if data else 0} of {cases} cases")
        elif rc != 0:
            raise RuntimeError(f"serve_load exited {rc}: {' | '.join(text.strip().splitlines()[-3:])}")
    return {"runs": runs, "skipped": skipped, "cores": os.cpu_count()}


def _serve_env() -> dict[str, str]:
    """The environment for serving: pure-Python wheels from the kit on the path, and the kit's compiled codec
    wheels (fpng, pyspng, simplejpeg: a bare GPU image lacks them) installed once into .gpu-kit/site. Skip where
    the serving packages still do not import."""
    env = dict(os.environ)
    paths = sorted(str(p) for p in (KIT / "wheels").glob("*.whl"))
    binary = sorted(str(p) for p in (KIT / "wheels" / "binary").glob("*.whl"))
    site = KIT / "site"
    if binary and not (site / ".installed").exists():
        res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                              "--no-cache-dir", "--upgrade", "--target", str(site), *binary],
                             capture_output=True, text=True, timeout=300)
        if res.returncode == 0:
            (site / ".installed").write_text("\n".join(Path(b).name for b in binary) + "\n")
        else:
            print(f"the kit's codec wheels did not install ({res.stderr.strip()[-300:]}): Pillow does their work",
                  flush=True)
    if (site / ".installed").exists():
        paths.append(str(site))
    if paths:
        env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    # What the server imports beyond the model's packages (a bare GPU image lacks the first two).
    probe = subprocess.run([sys.executable, "-c", "import grpc_health.v1.health_pb2_grpc, "
                            "grpc_reflection.v1alpha.reflection, grpc, prometheus_client"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise Skip(f"the serving packages do not import here ({last}); grpcio-health-checking and "
                   "grpcio-reflection can travel as wheels in .gpu-kit/wheels (make gpu-kit SERVE_WHEELS=1)")
    return env


# Step profile's cases, the goals' slowest first: (backend, options, dtype, op, batch). Triton at batch 32 without
# CUDA graphs (their launches are a negligible share there, and the kernels are then traced one by one): which
# kernels hold the bf16 rate under 2,500 images/s; eager and the official order at batch 1: how busy each keeps the
# GPU (a low share is launch-bound).
PROFILE_CASES = (("triton", {"cuda_graphs": False}, "bf16", "decode", 32),
                 ("triton", {"cuda_graphs": False}, "bf16", "encode", 32),
                 ("eager", {}, "fp32", "decode", 1), ("official", {}, "fp32", "decode", 1),
                 ("eager", {}, "fp32", "encode", 1), ("official", {}, "fp32", "encode", 1))
DRY_PROFILE_CASES = (("triton", {"cuda_graphs": False}, "fp32", "decode", 1), ("eager", {}, "fp32", "decode", 1),
                     ("official", {}, "fp32", "encode", 1))


def step_profile(ctx: Ctx) -> dict[str, Any]:
    """torch.profiler on the slowest measured paths (alae_rt.bench.profile_case): where their time goes."""
    import copy

    from alae_rt import Runtime
    from alae_rt.bench import profile_case

    ref = Runtime.from_config("tiny" if ctx.dry_run else "ffhq-1024", seed=0, device=ctx.device)
    cases, skipped = [], []
    for backend, options, dtype, op, batch in DRY_PROFILE_CASES if ctx.dry_run else PROFILE_CASES:
        label = f"{backend}{'-nograph' if options.get('cuda_graphs') is False else ''} {dtype} {op} batch {batch}"
        if ctx.left() < 0:
            skipped.append(f"{label}: time budget spent")
            continue
        try:
            rt = Runtime(copy.deepcopy(ref.model), device=ctx.device, dtype=dtype, backend=backend,
                         backend_options=options)
            case = {"label": label, **profile_case(rt, op, batch, reps=3 if ctx.dry_run else 5)}
        except Exception as exc:  # one case that breaks is a finding; the others still run
            case = {"label": label, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
        cases.append(case)
        ctx.keep(case)
        if "error" in case:
            print(f"{label}: {case['error']}", flush=True)
            continue
        busy = f", busy {case['busy_share']:.0%}" if case["busy_share"] is not None else ""
        print(f"{label}: {case['ms_per_call']:.3f} ms per call, {case['events_per_call']:.0f} {case['measured']} "
              f"({case['busy_ms_per_call']:.3f} ms{busy}); top: "
              + ", ".join(f"{t['name'][:40]} {t['share']:.0%}" for t in case["top"][:3]), flush=True)
    return {"cases": cases, "skipped": skipped}


WORKERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "device": step_device, "tests": step_tests, "parity": step_parity, "bench": step_bench,
    "bench_compile": step_bench, "kernels": step_kernels, "serve": step_serve, "serve_sim": step_serve_sim,
    "profile": step_profile,
}


def worker_main(name: str, state: Path, seconds: float, dry_run: bool, device: str | None) -> int:
    """One step in this process: its result (or skip note, or error) to STATE/NAME.json. `device`: what the
    device step found (else torch is asked)."""
    deadline = time.monotonic() + seconds
    result_path = state / f"{name}.json"
    try:
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
        if not dry_run and device != "cuda" and name != "device":
            raise Skip("no CUDA device")
        result = WORKERS[name](Ctx(name, state, deadline, dry_run, device))
        failed, stopped = result.pop("failed", None), result.pop("stopped", None)
        status, note = ("failed", failed) if failed else ("stopped", stopped) if stopped else ("ran", "")
        record = {"status": status, "note": note, "result": result}
    except Skip as exc:
        record = {"status": "skipped", "note": str(exc), "result": {}}
    except Exception as exc:
        traceback.print_exc()
        record = {"status": "failed", "note": f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}",
                  "result": {}}
    result_path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return 0


# ---- the run: steps in turn, each under its budget ---------------------------------------------------------------


def find_shared() -> tuple[Path | None, str]:
    """The fixtures folder and where it came from: ALAE_RT_SHARED, ../shared, or the kit's copy."""
    if os.environ.get("ALAE_RT_SHARED"):
        return Path(os.environ["ALAE_RT_SHARED"]), "ALAE_RT_SHARED"
    if (ROOT.parent / "shared" / "fixtures").is_dir():
        return ROOT.parent / "shared", "../shared"
    if (KIT / "shared" / "fixtures").is_dir():
        return KIT / "shared", "the kit's copy (.gpu-kit/shared)"
    return None, "none: no ../shared and no kit copy (make gpu-kit)"


def child_env(dry_run: bool, shared: Path | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    if shared is not None:
        env["ALAE_RT_SHARED"] = str(shared)
    if importlib.util.find_spec("alae_rt") is None:  # not installed: run from the checkout
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if dry_run:  # the CPU, even on a GPU machine; Triton through its interpreter
        env.update(CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1")
    return env


def run_step(step: Step, budget: float, state: Path, env: dict[str, str], dry_run: bool,
             device: str | None) -> dict[str, Any]:
    """The step in a worker process, cut off at `budget` seconds; it stops starting new work a little before."""
    soft = budget - min(15.0, 0.15 * budget)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", step.name, "--state", str(state),
           "--seconds", f"{soft:.1f}"] + (["--dry-run"] if dry_run else []) + (["--device", device] if device else [])
    print(f"\n== {step.name}: {step.title} (budget {budget:.0f} s)", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines, f"[{step.name}] "), daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        rc = None
    reader.join(10)
    seconds = time.monotonic() - t0
    path = state / f"{step.name}.json"
    record = json.loads(path.read_text()) if path.exists() else None
    partial = [json.loads(line) for line in (state / f"{step.name}.partial.jsonl").read_text().splitlines()] if (
        state / f"{step.name}.partial.jsonl").exists() else []
    if record is None and rc is None:
        record = {"status": "stopped", "note": f"cut off at its {budget:.0f} s budget; kept the {len(partial)} "
                                               "results it had measured", "result": {"partial": partial}}
    elif record is None:
        tail = " | ".join(line.strip() for line in lines[-3:])
        record = {"status": "failed", "note": f"the worker ended with exit status {rc}: {tail}",
                  "result": {"partial": partial}}
    return {"name": step.name, "title": step.title, "status": record["status"], "note": record["note"],
            "seconds": round(seconds, 1), "budget_s": round(budget, 1), "result": record["result"],
            "log_tail": [line.rstrip("\n") for line in lines[-40:]], "log": "".join(lines)}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.monotonic()
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    shared, shared_from = find_shared()
    env = child_env(args.dry_run, shared)
    overrides = dict(args.budget)
    chosen = [s for s in STEPS if args.steps is None or s.name in args.steps]
    hard_end = t_start + args.total - REPORT_RESERVE_S
    state = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    steps, planned = [], 0.0
    device = None  # "cuda" or "cpu" once the device step has run
    try:
        for group in _groups(chosen):
            owns = [overrides.get(s.name, s.dry_budget_s if args.dry_run else s.budget_s) for s in group]
            planned += max(owns)
            # Its own budget plus what the steps before it left unused, within the run's end.
            budget = min(planned - (time.monotonic() - t_start), hard_end - time.monotonic())
            if budget < 3:
                steps += [{"name": s.name, "title": s.title, "status": "skipped",
                           "note": f"the run's {args.total:.0f} s were spent", "seconds": 0.0, "budget_s": 0.0,
                           "result": {}, "log_tail": [], "log": ""} for s in group]
                continue
            slack = budget - max(owns)  # what the steps before left unused, shared by the group's steps
            run = functools.partial(run_step, state=state, env=env, dry_run=args.dry_run, device=device)
            with ThreadPoolExecutor(len(group)) as pool:
                steps += pool.map(run, group, [min(budget, own + slack) for own in owns])
            if group[0].name == "device":
                device = steps[-1]["result"].get("machine", {}).get("device")
    finally:
        shutil.rmtree(state, ignore_errors=True)
    skipped_by_choice = [s.name for s in STEPS if s not in chosen]
    for name in skipped_by_choice:
        step = next(s for s in STEPS if s.name == name)
        steps.append({"name": name, "title": step.title, "status": "skipped", "note": "not chosen (--steps)",
                      "seconds": 0.0, "budget_s": 0.0, "result": {}, "log_tail": [], "log": ""})
    steps.sort(key=lambda s: [x.name for x in STEPS].index(s["name"]))
    device = next((s["result"] for s in steps if s["name"] == "device" and s["result"].get("machine")), {})
    machine = device.get("machine") or _fallback_machine()
    report = {
        "kit": {"dry_run": args.dry_run, "started": started.isoformat(), "total_budget_s": args.total,
                "seconds": round(time.monotonic() - t_start, 1), "shared": shared_from,
                "argv": sys.argv[1:] if args.argv is None else args.argv},
        "machine": machine,
        "device": device,
        "steps": steps,
    }
    report["goals"] = goals(report)
    return report


def _groups(chosen: Sequence[Step]) -> list[list[Step]]:
    """The chosen steps in order, those TOGETHER (both chosen) as one group that runs side by side."""
    names = [s.name for s in chosen]
    groups: list[list[Step]] = []
    for step in chosen:
        if any(step.name in pair[1:] and pair[0] in names for pair in TOGETHER):
            continue  # runs beside its pair's first step
        partners = next((pair[1:] for pair in TOGETHER if pair[0] == step.name), ())
        groups.append([step, *(s for s in chosen if s.name in partners)])
    return groups


def _fallback_machine() -> dict[str, Any]:
    import platform

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"device": "unknown", "device_name": "unknown (the device step did not finish)", "cpu": platform.machine(),
            "versions": {"python": platform.python_version()},
            "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(), "commit": commit}


# ---- goals and the report ------------------------------------------------------------------------------------------


def _step(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next((s for s in report["steps"] if s["name"] == name), {"result": {}})


def bench_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in ("bench", "bench_compile"):
        result = _step(report, name)["result"]
        rows += result.get("rows") or [r for r in result.get("partial", []) if "median_ms" in r]
    return rows


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals against what this run measured; None where it measured nothing to judge by."""
    rows = bench_rows(report)

    def best(pred: Callable[[dict], bool]) -> dict[str, Any] | None:
        found = [r for r in rows if pred(r)]
        return min(found, key=lambda r: r["median_ms"] / r["batch"]) if found else None

    def row_label(r: dict[str, Any]) -> str:
        return f"{r['backend']} {r['dtype']}"

    out = []
    for op in ("decode", "encode"):
        r = best(lambda r, op=op: r["op"] == op and r["dtype"] == "bf16" and r["batch"] == 32)
        out.append({"goal": f"{op}, bf16, batch 32: >= {GOAL_IMAGES_PER_S} images/s",
                    "measured": f"{r['images_per_s']:.0f} images/s ({row_label(r)})" if r else "not measured",
                    "met": None if r is None else r["images_per_s"] >= GOAL_IMAGES_PER_S})
    for op in ("decode", "encode"):
        for batch, factor in ((32, 3), (1, 5)):
            eager = best(lambda r, op=op, b=batch: (r["op"], r["backend"], r["dtype"], r["batch"]) ==
                         (op, "eager", "fp32", b))
            for dtype in ("fp32", "bf16"):
                tri = best(lambda r, op=op, b=batch, d=dtype: (r["op"], r["backend"], r["dtype"], r["batch"]) ==
                           (op, "triton", d, b))
                ratio = eager["median_ms"] / tri["median_ms"] if eager and tri else None
                out.append({"goal": f"{op}, batch {batch}: triton {dtype} >= {factor}x eager fp32",
                            "measured": f"{ratio:.2f}x" if ratio else "not measured",
                            "met": None if ratio is None else ratio >= factor})
    r = best(lambda r: (r["op"], r["batch"]) == ("decode", 1) and r["backend"].startswith("triton"))
    out.append({"goal": "decode latency, batch 1: <= 3 ms (triton, best dtype)",
                "measured": f"{r['median_ms']:.2f} ms ({row_label(r)})" if r else "not measured",
                "met": None if r is None else r["median_ms"] <= 3.0})
    for run in _step(report, "serve")["result"].get("runs", []):
        level = next((lv for lv in run.get("levels") or [] if lv.get("concurrency") == 32), None)
        base = (level or {}).get("baseline") or {}
        ratio = level["images_per_s"] / base["images_per_s"] if level and base.get("images_per_s") else None
        out.append({"goal": f"serving ({run['format']} out), 32 callers: >= 90% of in-process",
                    "measured": (f"{ratio:.0%} ({level['images_per_s']:.0f} vs {base['images_per_s']:.0f} images/s)"
                                 if ratio else "not measured"),
                    "met": None if ratio is None else ratio >= 0.9})
    sim = _step(report, "serve_sim")["result"]
    jpeg = [(run["images_per_request"], r, run.get("processes", 1)) for run in _sim_runs(sim)
            for r in run["rows"] if r["case"] == "decode to jpeg"]
    best_rate = max(jpeg, key=lambda pr: pr[1]["images_per_s"], default=None)
    out.append({"goal": f"serving JPEG out on this host, simulated model ({SIM_MODEL} ms): >= {GOAL_IMAGES_PER_S} "
                        "images/s",
                "measured": (f"{best_rate[1]['images_per_s']:.0f} images/s ({best_rate[1]['concurrency']} callers, "
                             f"{best_rate[0]} per request, {best_rate[2]} server processes, {sim.get('cores')} cores)"
                             if best_rate else "not measured"),
                "met": None if best_rate is None else best_rate[1]["images_per_s"] >= GOAL_IMAGES_PER_S})
    single = [r for k, r, processes in jpeg if k == 1 and processes == 1]
    cpu = max(single, key=lambda r: r["concurrency"], default=None)
    out.append({"goal": "server CPU per JPEG image, simulated model, one image per call: <= 6 ms",
                "measured": f"{cpu['server_cpu_ms_per_image']:.2f} ms ({cpu['concurrency']} callers)" if cpu
                else "not measured",
                "met": None if cpu is None else cpu["server_cpu_ms_per_image"] <= 6})
    return out


def _fmt(value: Any, spec: str = "{:.3g}") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return spec.format(value)
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    m, kit, dev = report["machine"], report["kit"], report["device"]
    versions = m.get("versions", {})
    lines = [f"# GPU proof{' (CPU dry run)' if kit['dry_run'] else ''}: alae-rt on {m['device_name']}", "",
             f"- date {m['date']}, commit {m['commit']}; {kit['seconds']:.0f} s of a {kit['total_budget_s']:.0f} s "
             f"budget; fixtures from {kit['shared']}",
             f"- torch {versions.get('torch', '-')} (CUDA {dev.get('torch_cuda') or '-'}), triton "
             f"{versions.get('triton', '-')}, driver {dev.get('driver') or '-'}, python {versions.get('python')}",
             "", "## Steps", "", "| step | status | seconds (budget) | note |", "|---|---|---:|---|"]
    for s in report["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} ({s['budget_s']:.0f}) | "
                     f"{s['note'].replace('|', '/')} |")
    lines += ["", "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for g in report["goals"]:
        lines.append(f"| {g['goal']} | {g['measured']} | {_fmt({True: 'yes', False: 'NO'}.get(g['met']))} |")
    lines += (_md_device(dev) + _md_checks(report) + _md_bench(report) + _md_kernels(report) + _md_serve(report)
              + _md_serve_sim(report) + _md_profile(report))
    return "\n".join(lines) + "\n"


def _md_device(dev: dict[str, Any]) -> list[str]:
    if not dev:
        return []
    sheet, meas, gpu = dev.get("datasheet") or {}, dev.get("measured") or {}, dev.get("gpu") or {}
    lines = ["", "## 1. Device and limits", "", "| | datasheet | measured |", "|---|---:|---:|",
             f"| memory bandwidth, TB/s | {_fmt(sheet.get('bandwidth_tb_s'))} | {_fmt(meas.get('copy_tb_s'))} "
             f"(copy, {meas.get('copy_bytes', 0) / 2**30:.3g} GiB read + written) |",
             f"| dense bf16, TFLOP/s | {_fmt(sheet.get('bf16_tflop_s'))} | {_fmt(meas.get('bf16_matmul_tflop_s'))} "
             f"({meas.get('matmul_n')}^3 matmul) |",
             f"| dense tf32 / fp32, TFLOP/s | {_fmt(sheet.get('tf32_tflop_s'))} / {_fmt(sheet.get('fp32_tflop_s'))}"
             " | - |"]
    if gpu:
        lines += ["", f"{gpu['name']}: {gpu['memory_gib']} GiB, {gpu['multiprocessors']} multiprocessors, "
                      f"compute capability {gpu['capability']}, L2 {gpu['l2_mb']} MB; datasheet row: "
                      f"{sheet.get('card') or 'none for this card'}. TF32: cudnn {dev['tf32']['cudnn']}, "
                      f"matmul {dev['tf32']['matmul']} (torch defaults, as the timings ran)."]
    return lines


def _md_checks(report: dict[str, Any]) -> list[str]:
    lines = ["", "## 2. Tests and official-fixture parity"]
    tests = _step(report, "tests")["result"]
    if tests.get("tests"):
        c = tests["counts"]
        lines += ["", f"`{tests['command']}`: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, "
                      f"{c['skipped']} skipped", "", "| test | outcome | s | message |", "|---|---|---:|---|"]
        lines += [f"| {t['id']} | {t['outcome']} | {t['seconds']} | {t['message'].replace('|', '/')} |"
                  for t in tests["tests"]]
    for f in tests.get("failures", []):
        lines += ["", f"Failed: `{f['id']}` ({f['when']}):", "", "```", f["tail"], "```"]
    parity = _step(report, "parity")["result"]
    cases = parity.get("cases") or parity.get("partial") or []
    if cases:
        lines += ["", "Max abs error against the official outputs (checked: every output in fp32, assert_close "
                      "1e-4; the reconstruction and w in fp16/bf16):", "",
                  "| fixture | backend | dtype | passed | w | reconstruction | generate | mix | s |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|"]
        for c in cases:
            o = c.get("outputs", {})
            err = [_fmt(o[k]["max_abs_err"], "{:.1e}") if k in o else "-"
                   for k in ("encode_w", "reconstruct_img", "generate_img", "mix_img")]
            lines.append(f"| {c['fixture']} | {c['backend']} | {c['dtype']} | "
                         f"{'yes' if c['passed'] else 'NO ' + c.get('error', '')} | {' | '.join(err)} | "
                         f"{c['seconds']} |")
    for s in parity.get("skipped", []):
        lines.append(f"- skipped: {s}")
    return lines


def _md_bench(report: dict[str, Any]) -> list[str]:
    rows = bench_rows(report)
    if not rows:
        return []
    eager = {(r["op"], r["batch"]): r["median_ms"] for r in rows if (r["backend"], r["dtype"]) == ("eager", "fp32")}
    lines = ["", "## 3. Encode and decode", "", "Random weights; x official / x eager: the official order's / eager "
             "fp32's median over this one, same op and batch; max err: against eager fp32 (no TF32).", "",
             "| op | backend | dtype | batch | ms / batch | images/s | peak MB | max err | x official | x eager fp32 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["op"] != "decode", r["batch"], r["median_ms"])):
        x_eager = eager.get((r["op"], r["batch"]))
        lines.append(f"| {r['op']} | {r['backend']} | {r['dtype']} | {r['batch']} | {r['median_ms']:.3f} | "
                     f"{r['images_per_s']:.1f} | {_fmt(r['peak_mem_mb'], '{:.0f}')} | {r['max_abs_err']:.1e} | "
                     f"{_fmt(r['vs_official'], '{:.2f}x')} | "
                     f"{_fmt(x_eager / r['median_ms'] if x_eager else None, '{:.2f}x')} |")
    for name in ("bench", "bench_compile"):
        result = _step(report, name)["result"]
        lines += [f"- {name} skipped: {s}" for s in result.get("skipped", [])]
    return lines


def _md_kernels(report: dict[str, Any]) -> list[str]:
    result = _step(report, "kernels")["result"]
    rows = result.get("rows") or []
    if not rows:
        return []
    lim = result.get("limits") or {}
    lines = ["", "## 4. Kernels", "", f"`{result['command']}`; held against the measured copy "
             f"({_fmt(lim.get('measured_copy_gb_s'), '{:.0f}')} GB/s) and the datasheet "
             f"({_fmt(lim.get('datasheet_gb_s'), '{:.0f}')} GB/s; TFLOP/s against the datasheet's dense rate for the "
             "dtype).", "",
             "| kernel | dtype | shape | impl | ms | GB/s | % copy | % datasheet | TFLOP/s | % datasheet |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = r.get("label") or f"{r.get('op')} ({r.get('variant')})"
        shape = "x".join(map(str, r["shape"])) if isinstance(r.get("shape"), list) else "-"
        lines.append(f"| {name} | {r.get('dtype', '-')} | {shape} | {r.get('impl', '-')} | {_fmt(r.get('ms'))} | "
                     f"{_fmt(r.get('gb_per_s'))} | {_fmt(r.get('pct_of_measured_copy'))} | "
                     f"{_fmt(r.get('pct_of_datasheet_bandwidth'))} | {_fmt(r.get('tflop_per_s'))} | "
                     f"{_fmt(r.get('pct_of_datasheet_tflop_s'))} |")
    return lines


def _md_serve(report: dict[str, Any]) -> list[str]:
    runs = _step(report, "serve")["result"].get("runs") or []
    if not runs:
        return []
    lines = ["", "## 5. Serving", "", "| format | callers | requests | images/s | p50 ms | p99 ms | mean batch | "
             "in-process images/s | served / in-process |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        for lv in run.get("levels") or []:
            base = lv.get("baseline") or {}
            ratio = lv["images_per_s"] / base["images_per_s"] if base.get("images_per_s") else None
            lines.append(f"| {run['format']} | {lv['concurrency']} | {lv['requests']} | {lv['images_per_s']:.1f} | "
                         f"{_fmt(lv.get('p50_ms'), '{:.1f}')} | {_fmt(lv.get('p99_ms'), '{:.1f}')} | "
                         f"{_fmt(lv.get('mean_batch'), '{:.2f}')} | {_fmt(base.get('images_per_s'), '{:.1f}')} "
                         f"(batch {base.get('batch', '-')}) | {_fmt(ratio, '{:.0%}')} |")
    meta = runs[0].get("meta") or {}
    lines += ["", f"{meta.get('model', '')}, {meta.get('dtype', '')}, backend {meta.get('backend', '')}, max batch "
                  f"{meta.get('max_batch', '')}: `{runs[0]['command']}`"]
    return lines


def _sim_runs(sim: dict[str, Any]) -> list[dict[str, Any]]:
    """serve_sim's runs: all of them, or those kept when the step was cut off."""
    return sim.get("runs") or [r for r in sim.get("partial", []) if "rows" in r]


def _md_serve_sim(report: dict[str, Any]) -> list[str]:
    sim = _step(report, "serve_sim")["result"]
    runs = _sim_runs(sim)
    if not runs:
        return []
    lines = ["", "## 6. The server on this host's cores (simulated model)", "",
             f"benchmarks/serve_load.py --simulate-model {SIM_MODEL} on {sim.get('cores')} cores: the real request "
             "path over a stand-in model that is not the limit. CPU-ms: the server and its codec processes; loop: "
             "its event-loop threads (a process serves at most 1000 / loop images/s; several processes share the "
             "loop time).", "",
             "| server processes | images per call | case | callers | images/s | CPU-ms per image | loop ms per image "
             "| mean batch |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for run in runs:
        for r in run["rows"]:
            lines.append(f"| {run.get('processes', 1)} | {run['images_per_request']} | {r['case']} | "
                         f"{r['concurrency']} | {r['images_per_s']:.0f} | {r['server_cpu_ms_per_image']:.2f} | "
                         f"{_fmt(r.get('loop_cpu_ms_per_image'), '{:.2f}')} | {_fmt(r.get('mean_batch'), '{:.1f}')} |")
    lines += [f"- codecs: {runs[0]['meta'].get('codecs')}"] + [f"- `{run['command']}`" for run in runs]
    lines += [f"- skipped: {s}" for s in sim.get("skipped", [])]
    return lines


def _md_profile(report: dict[str, Any]) -> list[str]:
    result = _step(report, "profile")["result"]
    cases = result.get("cases") or [c for c in result.get("partial", []) if "label" in c]
    if not cases:
        return []
    lines = ["", "## 7. Where the time goes (torch.profiler)", "",
             "ms per call: timed without the profiler; busy: the kernels' time over that (a low share is a "
             "launch-bound call); per kernel: its share of the kernels' time.", ""]
    for c in cases:
        if "error" in c:
            lines += [f"- {c['label']}: {c['error']}"]
            continue
        busy = f", busy {c['busy_share']:.0%}" if c.get("busy_share") is not None else ""
        lines += [f"**{c['label']}**: {c['ms_per_call']:.3f} ms per call; {c['events_per_call']:.0f} "
                  f"{c['measured']} per call taking {c['busy_ms_per_call']:.3f} ms{busy}", "",
                  "| kernel | calls per call | ms per call | share |", "|---|---:|---:|---:|"]
        lines += [f"| `{t['name'][:90]}` | {t['calls_per_call']:g} | {t['ms_per_call']:.3f} | {t['share']:.0%} |"
                  for t in c["top"]]
        lines.append("")
    lines += [f"- skipped: {s}" for s in result.get("skipped", [])]
    return lines


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """images/s against batch for encode and decode, one line per backend and dtype, the goal as a line."""
    rows = bench_rows(report)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.2), squeeze=False)
    # A colour per backend and a line style per dtype: eleven and more lines stay apart (ten colours cycle).
    colours = {b: plt.cm.tab10(i % 10) for i, b in enumerate(sorted({r["backend"] for r in rows}))}
    styles = {"fp32": "-", "bf16": "--", "fp16": ":"}
    for ax, op in zip(axes[0], ("decode", "encode")):
        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for r in rows:
            if r["op"] == op:
                series.setdefault((r["backend"], r["dtype"]), []).append((r["batch"], r["images_per_s"]))
        for (backend, dtype), points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colours[backend],
                    linestyle=styles.get(dtype, "-."), label=f"{backend} {dtype}")
        if not report["kit"]["dry_run"]:
            ax.axhline(GOAL_IMAGES_PER_S, color="grey", linestyle="--", linewidth=1, label="goal (bf16, batch 32)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel("images/s")
        ax.set_title(op)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    more = [(h, lb) for h, lb in zip(*axes[0][1].get_legend_handles_labels()) if lb not in labels]
    fig.legend(handles + [h for h, _ in more], labels + [lb for _, lb in more], fontsize=7, loc="center right")
    m = report["machine"]
    models = [_step(report, name)["result"].get("model") for name in ("bench", "bench_compile")]
    model = next((f"{md['name']} " for md in models if md), "")
    fig.suptitle(f"alae-rt {model}{'(dry run) ' if report['kit']['dry_run'] else ''}encode/decode on "
                 f"{m['device_name']} ({m['date'][:10]}, {m['commit']})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.83, 1))  # the legend right of the panels, clear of the lines
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(report: dict[str, Any], out_dir: Path, extra_dir: Path | None) -> list[Path]:
    """JSON + markdown + the plot under out_dir, named by device, date and commit; with the steps' logs also
    under extra_dir (a remote run's collected results)."""
    m = report["machine"]
    device = re.sub(r"[^a-z0-9]+", "-", m["device_name"].lower()).strip("-")[:40] or "unknown"
    stamp = report["kit"]["started"][:16].replace("-", "").replace(":", "").replace("T", "-")
    stem = f"gpu_check_{'dry_' if report['kit']['dry_run'] else ''}{device}_{stamp}_{m['commit']}"
    logs = {s["name"]: s.pop("log", "") for s in report["steps"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(_in_checkout(json.dumps(report, indent=1, default=str) + "\n"))
    paths[1].write_text(_in_checkout(markdown(report)))
    png = plot(report, out_dir / f"{stem}.png")
    if png:
        paths.append(png)
    if extra_dir is not None:
        extra_dir.mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copyfile(p, extra_dir / p.name)
        (extra_dir / f"{stem}.log").write_text(_in_checkout("".join(f"== {name}\n{text}\n"
                                                                  for name, text in logs.items())))
    return paths


def _in_checkout(text: str) -> str:
    """Paths inside the checkout as the checkout names them (tracebacks, commands): a report kept in the
    repository says nothing of the machine it ran on but what it measured there."""
    text = text.replace(str(ROOT) + "/", "").replace(str(ROOT), ".")
    return re.sub(re.escape(tempfile.gettempdir()) + r"/gpu_check_\w+", "<state>", text)  # the run's own folder


def summary(report: dict[str, Any]) -> str:
    verdict = {True: "met", False: "NOT met", None: "-"}
    lines = [f"GPU proof on {report['machine']['device_name']} ({report['kit']['seconds']:.0f} s):"]
    lines += [f"  {s['name']:14s} {s['status']:8s} {s['seconds']:5.0f} s  {s['note'][:150]}" for s in report["steps"]]
    lines += [f"  goal: {g['goal']}: {g['measured']} [{verdict[g['met']]}]" for g in report["goals"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Steps: " + ", ".join(s.name for s in STEPS))
    p.add_argument("--dry-run", action="store_true", help="the kit's own code on the CPU with tiny models")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results; dry run: out/gpu-check-dry)")
    p.add_argument("--steps", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   help="comma-separated steps to run (default all)")
    p.add_argument("--budget", action="append", default=[], metavar="STEP=SECONDS", type=_budget,
                   help="a step's own budget, e.g. --budget bench=150")
    p.add_argument("--total", type=float, default=TOTAL_S, help=f"seconds for the whole run (default {TOTAL_S})")
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv
    if args.steps and (unknown := set(args.steps) - {s.name for s in STEPS}):
        p.error(f"--steps: unknown {', '.join(sorted(unknown))}")
    return args


def _budget(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    if name not in {s.name for s in STEPS}:
        raise argparse.ArgumentTypeError(f"unknown step {name!r}")
    try:
        return name, float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected STEP=SECONDS") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.state, args.seconds, args.dry_run, args.device)
    report = run_all(args)
    extra = os.environ.get("ALAE_RT_RESULTS_DIR")
    paths = write(report, args.out or (DRY_RESULTS if args.dry_run else RESULTS), Path(extra) if extra else None)
    print()
    print(summary(report))
    for path in paths:
        print(f"wrote {path}")
    return 1 if any(s["status"] == "failed" for s in report["steps"]) else 0


if __name__ == "__main__":
    sys.exit(main())
