"""onnxruntime (CPU provider) against eager torch on the CPU: encode and decode, images/s and achieved GFLOP/s.

    python benchmarks/bench_onnxruntime.py                      # ffhq-1024, batch 1: the recorded numbers
    python benchmarks/bench_onnxruntime.py --preset small-64 --repeats 2 --out /tmp/bench   # a quick run

Random weights of the preset (speed does not depend on their values). The model is exported with the
project's exporter (verified against eager as always), both backends run the same inputs, and the results
say how far apart the outputs are. Writes `onnxruntime_cpu_<preset>_b<batch>_<date>_<commit>.json` and `.md`
into --out (default benchmarks/results/), tagged with the CPU model, thread counts, library versions, date
and commit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from alae_rt import Runtime, __version__
from alae_rt.bench import cpu_model, git_commit, unused_stem
from alae_rt.config import PRESETS
from alae_rt.export.onnx_export import export_onnx
from alae_rt.flops import count_flops

ROOT = Path(__file__).resolve().parents[1]


def time_call(fn, warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of `repeats` calls after `warmup` untimed ones."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ffhq-1024", choices=list(PRESETS), help="model preset (default ffhq-1024)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both torch and onnxruntime (default: each library's own default)")
    p.add_argument("--onnx-dir", type=Path, help="reuse this export of the preset (seed 0) instead of exporting")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch and --repeats must be >= 1, --warmup >= 0")

    if args.threads:
        torch.set_num_threads(args.threads)
    eager = Runtime.from_config(args.preset, seed=0)
    cfg = eager.config
    scratch = None
    onnx_dir = args.onnx_dir
    export_s = None
    if onnx_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="alae-rt-bench-")
        onnx_dir = Path(scratch.name)
        print(f"exporting {cfg.name} to ONNX...", file=sys.stderr)
        start = time.perf_counter()
        export_onnx(eager.model, onnx_dir, progress=lambda m: print(m, file=sys.stderr))
        export_s = time.perf_counter() - start
    options = {"onnx_dir": onnx_dir, **({"threads": args.threads} if args.threads else {})}
    ort_rt = Runtime(eager.model, backend="onnxruntime", backend_options=options, max_batch=args.batch)
    eager.max_batch = args.batch

    gen = torch.Generator().manual_seed(0)
    n, r, c, d = args.batch, cfg.resolution, cfg.channels, cfg.latent_size
    x = torch.rand(n, c, r, r, generator=gen) * 2 - 1
    styles = eager.truncate(eager.map(torch.randn(n, d, generator=gen)))  # [N, 2L, D]
    flops = count_flops(cfg)
    calls = {
        "encode": {"eager": lambda: eager.encode(x), "onnxruntime": lambda: ort_rt.encode(x)},
        "decode": {"eager": lambda: eager.decode(styles, noise="const"),
                   "onnxruntime": lambda: ort_rt.decode(styles, noise="const")},
    }
    rows = []
    for op, by_backend in calls.items():
        with torch.inference_mode():
            outputs = {name: fn() for name, fn in by_backend.items()}
        max_error = float((outputs["onnxruntime"] - outputs["eager"]).abs().max())
        for backend, fn in by_backend.items():
            print(f"timing {op} / {backend} ({args.repeats} calls of batch {n})...", file=sys.stderr)
            times = time_call(fn, args.warmup, args.repeats)
            median = statistics.median(times)
            rows.append({
                "op": op, "backend": backend, "batch": n,
                "median_ms": round(median * 1e3, 2), "min_ms": round(min(times) * 1e3, 2),
                "images_per_s": float(f"{n / median:.4g}"),
                "gflop_per_s": float(f"{flops[op] * n / median / 1e9:.4g}"),
                "max_abs_error_vs_eager": 0.0 if backend == "eager" else max_error,
            })

    import numpy
    import onnx
    import onnxruntime

    now = datetime.datetime.now(datetime.timezone.utc)
    commit = git_commit()
    result = {
        "benchmark": "onnxruntime CPU provider vs eager torch on the CPU",
        "preset": cfg.name, "resolution": r, "dtype": "fp32", "batch": n,
        "repeats": args.repeats, "warmup": args.warmup,
        "gflop_per_image": {k: round(flops[k] / 1e9, 3) for k in ("encode", "decode")},
        "device": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "machine": platform.machine()},
        "threads": {"torch": torch.get_num_threads(), "onnxruntime": args.threads or "onnxruntime default"},
        "versions": {"alae_rt": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": numpy.__version__},
        "date": now.isoformat(timespec="seconds"),
        "commit": commit,
        "export_seconds": None if export_s is None else round(export_s, 1),
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = unused_stem(args.out, f"onnxruntime_cpu_{cfg.name}_b{n}_{now:%Y%m%d}_{commit}")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# onnxruntime (CPU) vs eager (CPU): {cfg.name}, {r}x{r}, batch {n}, fp32",
        "",
        f"{result['device']['cpu']} ({os.cpu_count()} logical CPUs); threads: torch {result['threads']['torch']}, "
        f"onnxruntime {result['threads']['onnxruntime']}; {now:%Y-%m-%d}, commit {commit}",
        "",
        "versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
        f"median of {args.repeats} calls after {args.warmup} warm-up; GFLOP per image: encode "
        f"{result['gflop_per_image']['encode']}, decode {result['gflop_per_image']['decode']}",
        "",
        "| op | backend | median ms | images/s | GFLOP/s | max abs error vs eager |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(f"| {row['op']} | {row['backend']} | {row['median_ms']:.1f} | {row['images_per_s']:.4g} | "
                     f"{row['gflop_per_s']:.4g} | {row['max_abs_error_vs_eager']:.1e} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {args.out / stem}.json and .md", file=sys.stderr)
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
