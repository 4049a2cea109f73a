"""Per-kernel benchmark: each fused op against its torch reference run eagerly and under torch.compile, at the
ffhq-1024 layer shapes; reports time, achieved GB/s (bytes each op must move at least) and TFLOP/s.

    python benchmarks/bench_kernels.py                 # CUDA, fp32/fp16/bf16, writes benchmarks/results/
    python benchmarks/bench_kernels.py --smoke         # tiny shapes; runs anywhere (TRITON_INTERPRET=1 on CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from alae_rt.bench import machine_info

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (batch, channels, resolution) of ffhq-1024 layers: the wide-and-small and the narrow-and-huge ends.
LAYERS = [(8, 512, 32), (8, 128, 128), (8, 32, 512), (8, 16, 1024)]
SMOKE_LAYERS = [(2, 8, 8), (1, 4, 16)]


def _cases(n: int, c: int, r: int, dtype: torch.dtype, device: str):
    """(op name, {impl: zero-arg call}, bytes moved at least, flops) for one layer shape."""
    from alae_rt.kernels import (
        act_stats,
        act_stats_ref,
        encoder_epilogue,
        encoder_epilogue_ref,
        generator_epilogue,
        generator_epilogue_ref,
        modulate,
        modulate_ref,
    )
    from alae_rt.kernels.modconv import modulated_conv3x3, modulated_conv3x3_ref, pack_conv3x3

    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    e = torch.tensor([], dtype=dtype).element_size()
    x, noise = rnd(n, c, r, r), rnd(n, 1, r, r)
    nw, b, style = rnd(c), rnd(c), rnd(n, 2 * c, scale=0.5)
    mean, scale, shift = (rnd(n, c).float() for _ in range(3))
    weight = rnd(c, c, 3, 3, scale=(2 / (9 * c)) ** 0.5)
    packed = pack_conv3x3(weight)
    plane = n * c * r * r * e
    noise_bytes = n * r * r * e
    y_pool = rnd(n, c, 2 * r, 2 * r)
    return [
        ("generator_epilogue",
         {"triton": lambda: generator_epilogue(x, noise, nw, b, style, impl="triton"),
          "torch": lambda: generator_epilogue_ref(x, noise, nw, b, style),
          "compile": (torch.compile(generator_epilogue_ref), (x, noise, nw, b, style))},
         2 * plane + noise_bytes, 0),
        ("encoder_epilogue",
         {"triton": lambda: encoder_epilogue(x, b, impl="triton"),
          "torch": lambda: encoder_epilogue_ref(x, b),
          "compile": (torch.compile(encoder_epilogue_ref), (x, b))},
         2 * plane, 0),
        ("act_stats_blur",
         {"triton": lambda: act_stats(x, noise, nw, b, pre="blur", impl="triton"),
          "torch": lambda: act_stats_ref(x, noise, nw, b, pre="blur"),
          "compile": (torch.compile(act_stats_ref), (x, noise, nw, b, "blur"))},
         2 * plane + noise_bytes, 0),
        ("act_stats_pool",
         {"triton": lambda: act_stats(y_pool, None, None, b, pre="pool", impl="triton"),
          "torch": lambda: act_stats_ref(y_pool, None, None, b, pre="pool"),
          "compile": (torch.compile(act_stats_ref), (y_pool, None, None, b, "pool"))},
         5 * plane, 0),
        ("modulate_blur",
         {"triton": lambda: modulate(x, mean, scale, shift, post="blur", impl="triton"),
          "torch": lambda: modulate_ref(x, mean, scale, shift, post="blur"),
          "compile": (torch.compile(modulate_ref), (x, mean, scale, shift, "blur"))},
         2 * plane, 0),
        ("modulated_conv3x3",
         {"triton": lambda: modulated_conv3x3(x, mean, scale, shift, weight, noise, nw, b, packed=packed,
                                              impl="triton"),
          "torch": lambda: modulated_conv3x3_ref(x, mean, scale, shift, weight, noise, nw, b),
          "compile": (torch.compile(modulated_conv3x3_ref), (x, mean, scale, shift, weight, noise, nw, b))},
         2 * plane + noise_bytes + weight.numel() * e, 2 * n * r * r * c * c * 9),
    ]


def _time(fn, device: str, reps: int) -> list[float]:
    if device == "cuda":
        from triton.testing import do_bench

        return [do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3]
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run(device: str, dtypes: list[str], layers, reps: int, impls: list[str]) -> dict:
    rows = []
    for dtype_name in dtypes:
        for n, c, r in layers:
            for op, calls, nbytes, flops in _cases(n, c, r, DTYPES[dtype_name], device):
                for impl in impls:
                    call = calls[impl]
                    if isinstance(call, tuple):
                        compiled, args = call
                        call = (lambda f, a: lambda: f(*a))(compiled, args)
                    with torch.inference_mode():
                        try:
                            sec = statistics.median(_time(call, device, reps))
                        except Exception as exc:  # e.g. torch.compile without a compiler: record, go on
                            print(f"{op} {impl} {dtype_name} {n}x{c}x{r}: failed: {exc}", file=sys.stderr)
                            continue
                    rows.append({"op": op, "impl": impl, "dtype": dtype_name, "shape": [n, c, r, r],
                                 "ms": sec * 1e3, "gb_per_s": nbytes / sec / 1e9,
                                 "tflop_per_s": flops / sec / 1e12 if flops else None})
                    print(f"{op:20s} {impl:8s} {dtype_name} {n}x{c}x{r}x{r}: {sec * 1e3:8.3f} ms "
                          f"{nbytes / sec / 1e9:8.1f} GB/s", flush=True)
    return {"machine": machine_info(torch.device(device)), "rows": rows,
            "note": "GB/s counts the bytes an op must move at least (inputs read once, outputs written once)"}


def write(report: dict, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    m = report["machine"]
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Kernel benchmark on {m['device_name']}", "",
             f"- date {m['date']}, commit {m['commit']}, versions "
             f"{', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
             f"- {report['note']}", "",
             "| op | dtype | shape | impl | ms | GB/s | TFLOP/s |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        tf = f"{r['tflop_per_s']:.1f}" if r["tflop_per_s"] else "-"
        lines.append(f"| {r['op']} | {r['dtype']} | {'x'.join(map(str, r['shape']))} | {r['impl']} | "
                     f"{r['ms']:.3f} | {r['gb_per_s']:.1f} | {tf} |")
    paths[1].write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    ops = sorted({r["op"] for r in report["rows"]})
    fig, axes = plt.subplots(1, len(ops), figsize=(3.6 * len(ops), 3.4), squeeze=False)
    for ax, op in zip(axes[0], ops):
        for impl in ("torch", "compile", "triton"):
            pts = [(r["shape"][1] * r["shape"][2] ** 2, r["gb_per_s"]) for r in report["rows"]
                   if r["op"] == op and r["impl"] == impl and r["dtype"] == report["rows"][0]["dtype"]]
            if pts:
                ax.plot(*zip(*sorted(pts)), marker="o", label=impl)
        ax.set_xscale("log")
        ax.set_title(op, fontsize=8)
        ax.set_xlabel("elements per sample", fontsize=7)
        ax.set_ylabel("GB/s", fontsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    plt.close(fig)
    return paths + [out / f"{stem}.png"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="fp32,fp16,bf16")
    p.add_argument("--impls", default="triton,torch,compile")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, a few repetitions: checks the script runs")
    p.add_argument("--reps", type=int, default=5, help="repetitions off CUDA (CUDA uses triton's do_bench)")
    p.add_argument("-o", "--out", default="benchmarks/results")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if not args.smoke:
            print("bench_kernels: the kernels are timed on CUDA only; use --smoke to check the script on CPU",
                  file=sys.stderr)
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are defined, i.e. imported
    report = run(device, args.dtypes.split(","), SMOKE_LAYERS if args.smoke else LAYERS, args.reps,
                 args.impls.split(","))
    m = report["machine"]
    name = "".join(ch for ch in m["device_name"] if ch.isalnum())[:24] if device == "cuda" else "cpu-interpreter"
    for path in write(report, Path(args.out), f"kernels_{name}_{m['date'][:10]}"):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
