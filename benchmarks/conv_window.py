"""The convolution kernels' GPU window (issue 27, item 5): one command, about 8 minutes, on the card it is on.

    python benchmarks/conv_window.py              # a CUDA machine: writes benchmarks/results/conv_window_*
    python benchmarks/conv_window.py --dry-run    # the script's own code on the CPU (interpreter, tiny shapes)

Sections, in order, each under a time budget (cases not begun by its end are skipped with a note; time a section
leaves passes on), every measurement written as a JSON line the moment it is taken (a run cut off keeps them):
  versions  the card, driver, torch / CUDA / cuDNN / triton;
  cudnn     cuDNN per layer shape in bf16 (cudnn.benchmark on), NCHW and channels-last: the 3x3, the transposed 4x4
            of the up-sampling layers, the strided 4x4 of the down-sampling ones - the per-layer choice's baseline;
  sweep     modulated_conv's autotune configs, each timed, at 512@32, 256@64, 128@128, 32@512, 16@1024 (channels @
            resolution, batch 32) in its three modes, then the autotuner's pick and its error against fp32 torch;
  profile   torch.profiler on conv=gemm in bf16 at batch 32: the top kernels of a decode and an encode;
  e2e       ffhq-1024 encode and decode at batch 1/8/32 (alae_rt.bench.run_bench, random weights): eager bf16, the
            triton backend's fused 3x3 kernel path and its conv=gemm path in bf16, torch.compile(mode=
            "max-autotune") in bf16 (last: the slowest to build), eager fp32; each row's max error against eager
            fp32 on the same inputs.
The report: <stem>.jsonl (the rows) and <stem>.md (tables, rewritten at each row), stem
conv_window_<device>_<date>_<commit>. On a lent GPU machine: `python3 benchmarks/conv_window.py --out $OUT`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOTAL_S = 470  # the whole run: ~8 minutes, so a rerun fits a 15-minute lending
# e2e last: torch.compile's max-autotune build, once begun, runs to its end whatever the budget says
SECTIONS = (("versions", 10), ("cudnn", 45), ("sweep", 160), ("profile", 40), ("e2e", 215))
DRY_SECTIONS = (("versions", 10), ("cudnn", 20), ("sweep", 60), ("profile", 40), ("e2e", 120))
# (channels, resolution) the sweep measures: the five, wide-and-small to narrow-and-huge
SWEEP = [(512, 32), (256, 64), (128, 128), (32, 512), (16, 1024)]
DRY_SWEEP = [(8, 8)]
BATCH = 32
DRY_BATCH = 2
MAXF = 512  # ffhq-1024's channel clamp: the up-sampling layer into C channels reads min(512, 2C)


class Run:
    """The rows so far, the deadline of the section running, and the files they go to."""

    def __init__(self, out: Path, stem: str, dry_run: bool):
        self.out, self.stem, self.dry_run = out, stem, dry_run
        self.rows: list[dict[str, Any]] = []
        self.section = ""
        self.deadline = 0.0
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = out / f"{stem}.jsonl"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def emit(self, **row: Any) -> None:
        row = {"section": self.section, **row}
        self.rows.append(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        (self.out / f"{self.stem}.md").write_text(markdown(self))  # a run cut off keeps its tables too
        print(json.dumps(row, default=str), flush=True)


# ---- sections ----------------------------------------------------------------------------------------------


def section_versions(run: Run, dev) -> None:
    import torch

    import alae_rt
    from alae_rt.bench import machine_info

    info = machine_info(dev)
    row = {"device": info["device_name"], "versions": info["versions"], "commit": info["commit"],
           "date": info["date"], "alae_rt": getattr(alae_rt, "__version__", None),
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        row.update(sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}")
    run.emit(**row)


def _layers(sweep: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """(mode, cin, cout, input h) of the sweep's layers: the 3x3 at C@R, the up-sampling conv into it from R/2, the
    down-sampling conv out of it to R/2 (the encoder's widths double as they halve)."""
    out = []
    for c, r in sweep:
        out.append({"mode": "same", "cin": c, "cout": c, "h": r})
        out.append({"mode": "up", "cin": min(MAXF, 2 * c), "cout": c, "h": r // 2})
        out.append({"mode": "down", "cin": c, "cout": min(MAXF, 2 * c), "h": r})
    return out


def _flops(layer: dict[str, Any], n: int) -> float:
    """Multiply-adds x 2 of the layer as modulated_conv computes it (the rewrites' counts: 9, 4 and 16 taps)."""
    h, cin, cout = layer["h"], layer["cin"], layer["cout"]
    taps, pixels = {"same": (9, h * h), "up": (4, 4 * h * h), "down": (16, (h // 2) ** 2)}[layer["mode"]]
    return 2.0 * n * pixels * cin * cout * taps


def _layer_inputs(layer: dict[str, Any], n: int, dtype, dev) -> dict[str, Any]:
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    h, cin, cout = layer["h"], layer["cin"], layer["cout"]
    k = 3 if layer["mode"] == "same" else 4
    wshape = (cin, cout, k, k) if layer["mode"] == "up" else (cout, cin, k, k)
    x = torch.randn(n, cin, h, h, generator=g).to(dev, dtype).contiguous(memory_format=torch.channels_last)
    stats = [torch.randn(n, cin, generator=g).to(dev) * s for s in (1.0, 0.5, 1.0)]
    weight = (torch.randn(*wshape, generator=g) * (2 / (k * k * cin)) ** 0.5).to(dev, dtype)
    return {"x": x, "weight": weight, "mean": stats[0], "scale": stats[1], "shift": stats[2],
            "bias": torch.randn(cout, generator=g).to(dev, dtype)}


def section_cudnn(run: Run, dev) -> None:
    import torch
    import torch.nn.functional as F

    from alae_rt.bench import median_time

    torch.backends.cudnn.benchmark = True
    n = DRY_BATCH if run.dry_run else BATCH
    for layer in _layers(DRY_SWEEP if run.dry_run else SWEEP):
        if run.left() < 2:
            run.emit(**layer, skipped="the section's budget ran out")
            continue
        a = _layer_inputs(layer, n, torch.bfloat16 if dev.type == "cuda" else torch.float32, dev)
        for layout in ("nchw", "channels_last"):
            x = a["x"].contiguous() if layout == "nchw" else a["x"]
            w = a["weight"].contiguous() if layout == "nchw" else a["weight"].contiguous(
                memory_format=torch.channels_last)
            if layer["mode"] == "same":
                def fn(x=x, w=w): return F.conv2d(x, w, padding=1)
            elif layer["mode"] == "down":
                def fn(x=x, w=w): return F.conv2d(x, w, stride=2, padding=1)
            else:
                def fn(x=x, w=w): return F.conv_transpose2d(x, w, stride=2, padding=1)
            with torch.inference_mode():
                s = median_time(fn, dev, 1 if run.dry_run else 10, warmup=2)
            run.emit(**layer, batch=n, impl="cudnn" if dev.type == "cuda" else "torch-cpu", layout=layout,
                     ms=round(s * 1e3, 4), tflop_s=round(_flops(layer, n) / s / 1e12, 2))


def section_sweep(run: Run, dev) -> None:
    import torch
    from triton.runtime.errors import OutOfResources

    from alae_rt.bench import median_time
    from alae_rt.kernels import modulated_conv, modulated_conv_ref, pack_modulated_conv
    from alae_rt.kernels._modulated_conv_triton import configs, modulated_conv_tuned, prune

    n = DRY_BATCH if run.dry_run else BATCH
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float16  # the interpreter has no bf16 matmul
    for layer in _layers(DRY_SWEEP if run.dry_run else SWEEP):
        if run.left() < 5:
            run.emit(**layer, skipped="the section's budget ran out")
            continue
        a = _layer_inputs(layer, n, dtype, dev)
        packed = pack_modulated_conv(a["weight"], layer["mode"])
        ho = layer["h"] * 2 if layer["mode"] == "up" else layer["h"] // 2 if layer["mode"] == "down" else layer["h"]
        m = n * (layer["h"] if layer["mode"] == "up" else ho) ** 2
        act = layer["mode"] != "up"  # the decoder's up-sampling conv is bare; its blur pass follows

        def call(config, a=a, mode=layer["mode"], act=act, packed=packed):
            return modulated_conv(a["x"], None, a["mean"], a["scale"], a["shift"], mode, bias=a["bias"], act=act,
                                  stats=act, packed=packed, config=config, impl="triton")

        grid_hw = layer["h"] if layer["mode"] == "up" else ho
        kept = prune(configs(), {"M": m, "CIN": layer["cin"], "COUT": layer["cout"], "HO": grid_hw, "WO": grid_hw})
        for cfg in kept[:1] if run.dry_run else kept:
            if run.left() < 3:
                break
            config = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            tile = f"{config['BLOCK_M']}x{config['BLOCK_N']}x{config['BLOCK_K']}/w{cfg.num_warps}/s{cfg.num_stages}"
            try:
                s = median_time(lambda config=config, call=call: call(config), dev, 1 if run.dry_run else 10, warmup=2)
            except OutOfResources as e:
                run.emit(**layer, batch=n, impl="modulated_conv", config=tile, launches=False, error=str(e)[:200])
                continue
            run.emit(**layer, batch=n, impl="modulated_conv", config=tile, ms=round(s * 1e3, 4),
                     tflop_s=round(_flops(layer, n) / s / 1e12, 2))
        if dev.type == "cuda" and run.left() > 10:  # the autotuner's own pick, and its error against fp32 torch
            s = median_time(lambda call=call: call(None), dev, 10, warmup=2)
            out, _, _ = call(None)
            ref, _, _ = modulated_conv_ref(a["x"], a["weight"], a["mean"], a["scale"], a["shift"], layer["mode"],
                                           bias=a["bias"], act=act, stats=False)
            best = getattr(modulated_conv_tuned, "best_config", None)
            run.emit(**layer, batch=n, impl="modulated_conv-autotuned", config=str(best), ms=round(s * 1e3, 4),
                     tflop_s=round(_flops(layer, n) / s / 1e12, 2),
                     max_err=float((out.float() - ref.float()).abs().max()),
                     ref_max=float(ref.float().abs().max()))
        del a, packed


def section_e2e(run: Run, dev) -> None:
    from alae_rt.bench import run_bench

    variants: dict[str, tuple] = {"eager-fp32": ("eager", {}, ["fp32"]), "triton-gemm": ("triton", {"conv": "gemm"})}
    backends = ["eager", "triton"]
    if run.dry_run:  # the interpreter takes seconds a call, torch.compile builds for minutes on a CPU
        backends = ["eager"]
    else:  # last: the slowest to build
        variants["compile-max-autotune"] = ("compile", {"mode": "max-autotune"})
    run_bench("tiny" if run.dry_run else "ffhq-1024", backends=backends,
              dtypes=["fp16" if run.dry_run else "bf16"], batches=(1,) if run.dry_run else (1, 8, 32),
              ops=("encode", "decode"), device=str(dev), min_reps=1 if run.dry_run else 5,
              min_time_s=0.0 if run.dry_run else 0.5, max_reps=2 if run.dry_run else 30, variants=variants,
              deadline=time.monotonic() + run.left() - 5, on_row=lambda row: run.emit(**row), log=print)


def section_profile(run: Run, dev) -> None:
    import torch

    from alae_rt import Runtime
    from alae_rt.bench import profile_case

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    rt = Runtime.from_config("tiny" if run.dry_run else "ffhq-1024", seed=0, device=str(dev), dtype=dtype,
                             backend="triton", backend_options={"conv": "gemm"})
    for op in ("decode",) if run.dry_run else ("decode", "encode"):
        if run.left() < 5:
            run.emit(op=op, skipped="the section's budget ran out")
            continue
        prof = profile_case(rt, op, 1 if run.dry_run else BATCH, reps=1 if run.dry_run else 5, top=15)
        run.emit(**{**prof, "backend": "triton-gemm"})


SECTION_FNS = {"versions": section_versions, "cudnn": section_cudnn, "sweep": section_sweep, "e2e": section_e2e,
               "profile": section_profile}


# ---- the report ---------------------------------------------------------------------------------------------


def markdown(run: Run) -> str:
    rows = run.rows
    head = next((r for r in rows if r["section"] == "versions" and "device" in r), {})
    lines = [f"# Convolution kernels' GPU window: {head.get('device', '?')}", "",
             f"{head.get('date', '?')}, commit {head.get('commit', '?')}; versions {head.get('versions', {})}, "
             f"CUDA {head.get('cuda')}, cuDNN {head.get('cudnn')}.", ""]
    layer_rows = [r for r in rows if r["section"] in ("cudnn", "sweep") and "ms" in r]
    if layer_rows:
        lines += [f"## Per layer (batch {layer_rows[0].get('batch')})", "",
                  "| mode | cin | cout | h | impl | layout / config | ms | TFLOP/s |",
                  "|---|---:|---:|---:|---|---|---:|---:|"]
        for r in layer_rows:
            lines.append(f"| {r['mode']} | {r['cin']} | {r['cout']} | {r['h']} | {r['impl']} | "
                         f"{r.get('layout') or r.get('config')} | {r['ms']} | {r['tflop_s']} |")
        lines += ["", "Per-layer choice (fastest of cuDNN channels-last and the best modulated_conv config):", "",
                  "| mode | cin | cout | h | cuDNN ms | modulated_conv ms | choice |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        keys = sorted({(r["mode"], r["cin"], r["cout"], r["h"]) for r in layer_rows}, key=lambda k: (k[3], k[0]))
        for k in keys:
            same = [r for r in layer_rows if (r["mode"], r["cin"], r["cout"], r["h"]) == k]
            cud = min((r["ms"] for r in same if r["section"] == "cudnn" and r.get("layout") == "channels_last"),
                      default=None)
            mc = min((r["ms"] for r in same if r["section"] == "sweep"), default=None)
            choice = "-" if cud is None or mc is None else ("modulated_conv" if mc < cud else "cudnn")
            lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {cud} | {mc} | {choice} |")
    e2e = [r for r in rows if r["section"] == "e2e" and "images_per_s" in r]
    if e2e:
        lines += ["", "## End to end (ffhq-1024, random weights)", "",
                  "| op | backend | dtype | batch | ms | images/s | max err vs eager fp32 |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for r in e2e:
            lines.append(f"| {r.get('op')} | {r.get('backend')} | {r.get('dtype')} | {r.get('batch')} | "
                         f"{_num(r.get('median_ms'))} | {_num(r.get('images_per_s'))} | {_num(r.get('max_abs_err'))} |")
    for r in rows:
        if r["section"] == "profile" and "top" in r:
            lines += ["", f"## Profile: {r['op']} ({r.get('backend')}, {r.get('dtype')})", "",
                      f"{r.get('ms_per_call')} ms a call, the GPU busy {r.get('busy_share')} of it, "
                      f"{r.get('events_per_call')} kernels a call.", "",
                      "| kernel | calls a call | ms a call | share |", "|---|---:|---:|---:|"]
            for k in r["top"]:
                lines.append(f"| {str(k.get('name'))[:90]} | {k.get('calls_per_call')} | {_num(k.get('ms_per_call'))} "
                             f"| {k.get('share')} |")
    notes = [r for r in rows if "skipped" in r or "error" in r]
    if notes:
        lines += ["", "## Skipped and failed", ""] + [f"- {r['section']}: {r.get('skipped') or r.get('error')}"
                                                       for r in notes]
    return "\n".join(lines) + "\n"


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else "-" if v is None else str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the CPU, Triton's interpreter, tiny shapes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder for the .jsonl and .md (default benchmarks/results)")
    parser.add_argument("--sections", default=",".join(s for s, _ in SECTIONS),
                        help=f"comma list of sections to run (default all: {','.join(s for s, _ in SECTIONS)})")
    args = parser.parse_args(argv)
    chosen = [s for s in args.sections.split(",") if s]
    if unknown := [s for s in chosen if s not in SECTION_FNS]:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTION_FNS)}")
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("alae_rt") is None:
        # the interpreter must be on before triton is imported; a checkout not installed runs from its folder
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if args.dry_run:
            env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
        if importlib.util.find_spec("alae_rt") is None:
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:])], env)
    import torch

    from alae_rt.bench import git_commit, unused_stem

    dev = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if dev.type != "cuda" and not args.dry_run:
        print("conv_window: no CUDA device here (--dry-run runs the script's own code on the CPU)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "dry"
    tag = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    stem = unused_stem(args.out, f"conv_window_{tag}_{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M}_{git_commit()}")
    run = Run(args.out, stem, args.dry_run)
    start = time.monotonic()
    budgets = dict(DRY_SECTIONS if args.dry_run else SECTIONS)
    carry = 0.0
    for section in chosen:
        run.section = section
        t0 = time.monotonic()
        run.deadline = t0 + budgets[section] + carry
        try:
            SECTION_FNS[section](run, dev)
        except Exception as e:  # a section that breaks does not stop the others
            run.emit(error=f"{type(e).__name__}: {e}"[:500], traceback=traceback.format_exc()[-2000:])
        carry = max(0.0, run.deadline - time.monotonic())
        (run.out / f"{stem}.md").write_text(markdown(run))
        print(f"== {section}: {time.monotonic() - t0:.1f} s (run {time.monotonic() - start:.0f} s of {TOTAL_S})",
              flush=True)
    print(f"wrote {run.jsonl} and {run.out / stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
