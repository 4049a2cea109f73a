"""Per-kernel benchmark, one entry per op of alae_rt.kernels (act_stats, modulate, modulated_conv3x3, modulated_conv,
modulated_blur, each in the variants the triton backend runs): the Triton kernel against its torch reference run
eagerly and under torch.compile, at the ffhq-1024 layer shapes; reports time, achieved GB/s (the bytes each op must
move at least) and TFLOP/s, with the bytes and FLOPs counted.

    python benchmarks/bench_kernels.py                 # CUDA: fp32/fp16/bf16, batch 8, writes benchmarks/results/
    python benchmarks/bench_kernels.py --device cpu    # CPU: the torch references only, batch 1, fp32
    python benchmarks/bench_kernels.py --smoke         # tiny shapes; runs anywhere (TRITON_INTERPRET=1 on CPU)

The Triton kernels' speed needs a CUDA GPU: on CPU they run only under Triton's interpreter, which checks them
and says nothing of their speed, so a CPU run times the references (what the eager and compile backends run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (channels, resolution) of ffhq-1024 layers: the narrow-and-huge and the wide-and-small ends. The huge ones first:
# at batch 8 they are far past a GPU's L2 (16x1024x1024 fp32: 512 MB), so they measure memory bandwidth, and a run
# cut off at its time budget (the GPU proof's kernels step) has them; 8x512x32x32 (16 MB) fits in an H200's L2.
LAYERS = [(16, 1024), (32, 512), (128, 128), (512, 32)]
SMOKE_LAYERS = [(8, 8), (4, 16)]
# triton: the fused kernel; unfused (modulated_conv3x3 only): the same op as the Triton backend's cudnn_max_res runs
# it - modulate, the dtype's own conv2d (cuDNN on CUDA), act_stats; torch / compile: the fp32 reference, eager / built
IMPLS = ("triton", "unfused", "torch", "compile")
TRITON_IMPLS = ("triton", "unfused")


def cases(n: int, c: int, r: int, dtype: torch.dtype, device: str) -> list[dict]:
    """One layer shape's benchmark entries: op name, variant, {impl: zero-arg call}, bytes moved at least, FLOPs."""
    from alae_rt.kernels import (
        act_stats,
        act_stats_ref,
        modulate,
        modulate_ref,
        modulated_blur,
        modulated_blur_ref,
        modulated_conv,
        modulated_conv3x3,
        modulated_conv3x3_ref,
        modulated_conv_ref,
        pack_conv3x3,
        pack_modulated_conv,
    )

    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    e = torch.tensor([], dtype=dtype).element_size()
    x, noise = rnd(n, c, r, r), rnd(n, 1, r, r)
    nw, b = rnd(c), rnd(c)
    mean, scale, shift = (rnd(n, c).float() for _ in range(3))
    weight = rnd(c, c, 3, 3, scale=(2 / (9 * c)) ** 0.5)
    packed = pack_conv3x3(weight)
    plane = n * c * r * r * e
    noise_bytes = n * r * r * e
    y_pool = rnd(n, c, 2 * r, 2 * r)

    # conv=gemm's layers, NHWC: the 3x3, the up-sampling transposed 4x4 from r/2, the down-sampling strided 4x4
    cl = torch.channels_last
    x_cl = x.contiguous(memory_format=cl)
    x_half = rnd(n, c, max(1, r // 2), max(1, r // 2)).contiguous(memory_format=cl)
    w4 = rnd(c, c, 4, 4, scale=(2 / (16 * c)) ** 0.5)
    gemm = {mode: (w, pack_modulated_conv(w, mode)) for mode, w in (("same", weight), ("up", w4), ("down", w4))}

    def gemm_entry(mode, src, nbytes, flops):
        w, pk = gemm[mode]
        act = mode != "up"  # the decoder's up-sampling conv is bare: its blur pass follows
        return entry("modulated_conv", f"mode={mode}",
                     lambda: modulated_conv(src, None, mean, scale, shift, mode, bias=b, act=act, stats=act,
                                            packed=pk, impl="triton"),
                     modulated_conv_ref, (src, w, mean, scale, shift, mode, None, None, b, act, act),
                     nbytes + w.numel() * e, flops)

    def entry(op, variant, triton, ref, args, nbytes, flops=0, unfused=None):
        return {"op": op, "variant": variant, "triton": triton, "ref": ref, "args": args, "bytes": nbytes,
                "flops": flops, "unfused": unfused}

    def unfused_conv():
        y = torch.nn.functional.conv2d(modulate(x, mean, scale, shift, impl="triton"), weight, padding=1)
        return act_stats(y, noise, nw, b, impl="triton")

    return [
        # The generator's up-sampling epilogue: blur + noise + bias + leaky_relu + statistics.
        entry("act_stats", "pre=blur, noise", lambda: act_stats(x, noise, nw, b, pre="blur", impl="triton"),
              act_stats_ref, (x, noise, nw, b, "blur"), 2 * plane + noise_bytes),
        # The encoder's down-sampling epilogue: 2x2 pool + bias + leaky_relu + statistics.
        entry("act_stats", "pre=pool", lambda: act_stats(y_pool, None, None, b, pre="pool", impl="triton"),
              act_stats_ref, (y_pool, None, None, b, "pool"), 5 * plane),
        # The generator's instance norm + AdaIN before an up-sampling convolution and to_rgb.
        entry("modulate", "post=none", lambda: modulate(x, mean, scale, shift, impl="triton"),
              modulate_ref, (x, mean, scale, shift), 2 * plane),
        # The encoder's instance norm, with the blur before its down-sampling convolution.
        entry("modulate", "post=blur", lambda: modulate(x, mean, scale, shift, post="blur", impl="triton"),
              modulate_ref, (x, mean, scale, shift, "blur"), 2 * plane),
        entry("modulated_conv3x3", "noise, bias",
              lambda: modulated_conv3x3(x, mean, scale, shift, weight, noise, nw, b, packed=packed, impl="triton"),
              modulated_conv3x3_ref, (x, mean, scale, shift, weight, noise, nw, b),
              2 * plane + noise_bytes + weight.numel() * e, 2 * n * r * r * c * c * 9, unfused=unfused_conv),
        gemm_entry("same", x_cl, 2 * plane, 2 * n * r * r * c * c * 9),
        gemm_entry("up", x_half, plane + plane // 4, 2 * n * r * r * c * c * 4),
        gemm_entry("down", x_cl, plane + plane // 4, 2 * n * r * r * c * c * 4),
        # The generator's blur after an up-sampling conv, with its epilogue; the encoder's norm + blur.
        entry("modulated_blur", "noise, bias, act, stats",
              lambda: modulated_blur(x_cl, noise=noise, noise_weight=nw, bias=b, act=True, stats=True, impl="triton"),
              modulated_blur_ref, (x_cl, None, None, None, noise, nw, b, True, True), 2 * plane + noise_bytes),
        entry("modulated_blur", "norm", lambda: modulated_blur(x_cl, mean, scale, shift, impl="triton"),
              modulated_blur_ref, (x_cl, mean, scale, shift), 2 * plane),
    ]


def _time(fn, device: str, reps: int) -> tuple[float, float | None]:
    """(median, best) seconds of a call; best only off CUDA, where other work on the machine inflates the
    median (triton's do_bench on CUDA gives the median of its own repetitions)."""
    if device == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3, None
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def _num(v: float) -> str:
    """Three significant digits, never in e-notation (GB/s run from 0.05 on a CPU to thousands on a GPU)."""
    return f"{v:.{max(0, 2 - math.floor(math.log10(abs(v))))}f}" if v else "0"


def _call(case: dict, impl: str):
    """The case's zero-arg call for impl, or None where the case has no such impl."""
    if impl in TRITON_IMPLS:
        return case[impl]
    fn, args = case["ref"], case["args"]
    if impl == "compile":
        fn = torch.compile(fn)
    return lambda: fn(*args)


def run(device: str, dtypes: list[str], layers, batch: int, reps: int, impls: list[str]) -> dict:
    # Imported here, after main has set TRITON_INTERPRET: this import brings in triton, and Triton's interpreter
    # runs kernels that call triton.language's own jit functions only when it was on before triton's import.
    from alae_rt.bench import machine_info

    load_start = os.getloadavg()[0]
    rows = []
    for dtype_name in dtypes:
        for c, r in layers:
            for case in cases(batch, c, r, DTYPES[dtype_name], device):
                for impl in impls:
                    call = _call(case, impl)
                    if call is None:
                        continue
                    label = f"{case['op']} ({case['variant']}) {impl} {dtype_name} {batch}x{c}x{r}x{r}"
                    with torch.inference_mode():
                        try:
                            sec, best = _time(call, device, reps)
                        except Exception as exc:  # e.g. torch.compile without a compiler: record, go on
                            print(f"{label}: failed: {exc}", file=sys.stderr)
                            continue
                    rows.append({"op": case["op"], "variant": case["variant"], "impl": impl, "dtype": dtype_name,
                                 "shape": [batch, c, r, r], "bytes": case["bytes"], "flops": case["flops"],
                                 "ms": sec * 1e3, "ms_best": None if best is None else best * 1e3,
                                 "gb_per_s": case["bytes"] / sec / 1e9,
                                 "tflop_per_s": case["flops"] / sec / 1e12 if case["flops"] else None})
                    print(f"{label:60s} {sec * 1e3:9.3f} ms {_num(case['bytes'] / sec / 1e9):>8s} GB/s", flush=True)
    note = ("GB/s and TFLOP/s from the median time; GB/s counts the bytes an op must move at least (inputs read "
            "once, outputs written once)")
    if device == "cpu" and "triton" not in impls:
        note += ("; CPU: the torch references only - the Triton kernels' speed needs a CUDA GPU "
                 "(make bench-gpu), on CPU they run only under Triton's interpreter")
    elif device == "cpu":
        note += "; CPU: Triton under its interpreter - these times check that the script runs, not speed"
    report = {"machine": machine_info(torch.device(device)), "batch": batch, "rows": rows, "note": note}
    if device == "cpu":  # other work on the machine shows in CPU times: the load says how much there was
        report["load_average_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    return report


def write(report: dict, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    m = report["machine"]
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Kernel benchmark on {m['device_name']}", "",
             f"- device {m['device']}, {m['threads']} threads, date {m['date']}, commit {m['commit']}, versions "
             f"{', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
             f"- {report['note']}",
             *([f"- 1-minute load average {report['load_average_1min']['start']:.1f} at the start, "
                f"{report['load_average_1min']['end']:.1f} at the end"] if "load_average_1min" in report else []),
             "",
             "| op | variant | dtype | shape | impl | ms (median) | ms (best) | GB/s | TFLOP/s |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        tf = _num(r["tflop_per_s"]) if r["tflop_per_s"] else "-"
        best = "-" if r["ms_best"] is None else f"{r['ms_best']:.3f}"
        lines.append(f"| {r['op']} | {r['variant']} | {r['dtype']} | {'x'.join(map(str, r['shape']))} | "
                     f"{r['impl']} | {r['ms']:.3f} | {best} | {_num(r['gb_per_s'])} | {tf} |")
    paths[1].write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    entries = list(dict.fromkeys((r["op"], r["variant"]) for r in report["rows"]))
    if not entries:
        return paths
    fig, axes = plt.subplots(1, len(entries), figsize=(3.6 * len(entries), 3.4), squeeze=False)
    for ax, (op, variant) in zip(axes[0], entries):
        for impl in IMPLS:
            pts = [(r["shape"][1] * r["shape"][2] ** 2, r["gb_per_s"]) for r in report["rows"]
                   if (r["op"], r["variant"], r["impl"]) == (op, variant, impl)
                   and r["dtype"] == report["rows"][0]["dtype"]]
            if pts:
                ax.plot(*zip(*sorted(pts)), marker="o", label=impl)
        ax.set_xscale("log")
        ax.set_title(f"{op} ({variant})", fontsize=8)
        ax.set_xlabel("elements per sample", fontsize=7)
        ax.set_ylabel("GB/s", fontsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    plt.close(fig)
    return paths + [out / f"{stem}.png"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", help="default fp32,fp16,bf16 on CUDA, fp32 on CPU")
    p.add_argument("--impls", help=f"of {','.join(IMPLS)}; default all on CUDA, torch on CPU (Triton needs CUDA)")
    p.add_argument("--batch", type=int, help="default 8 on CUDA, 1 on CPU")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, a few repetitions: checks the script runs")
    p.add_argument("--reps", type=int, default=5, help="repetitions off CUDA, median taken (CUDA: triton's do_bench)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's own)")
    p.add_argument("-o", "--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    impls = (args.impls or (",".join(IMPLS) if cuda else "torch")).split(",")
    if unknown := set(impls) - set(IMPLS):
        p.error(f"--impls: unknown {', '.join(sorted(unknown))} (choose from {', '.join(IMPLS)})")
    dtypes = (args.dtypes or ("fp32,fp16,bf16" if cuda else "fp32")).split(",")
    if unknown := set(dtypes) - set(DTYPES):
        p.error(f"--dtypes: unknown {', '.join(sorted(unknown))} (choose from {', '.join(DTYPES)})")
    if not cuda and set(TRITON_IMPLS) & set(impls):
        if not args.smoke:
            print("bench_kernels: the Triton kernels' speed needs a CUDA GPU; on CPU time the torch references "
                  "(--impls torch,compile) or check the script with --smoke", file=sys.stderr)
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are defined, i.e. imported
    report = run(args.device, dtypes,
                 SMOKE_LAYERS if args.smoke else LAYERS, args.batch or (8 if cuda else 1), args.reps, impls)
    m = report["machine"]
    where = m["device_name"] if cuda else f"cpu {m['device_name']} {m['threads']} threads"
    slug = re.sub(r"[^a-z0-9]+", "-", where.lower()).strip("-")[:48]
    from alae_rt.bench import unused_stem

    stem = unused_stem(args.out, f"kernels_{'smoke_' if args.smoke else ''}{slug}_{m['date'][:10].replace('-', '')}_"
                                 f"{m['commit']}")
    for path in write(report, Path(args.out), stem):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
