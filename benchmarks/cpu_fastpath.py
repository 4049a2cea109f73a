"""The CPU fast-path study: every candidate way of running encode and decode at 1024x1024, batch 1, timed
against the official code's way in one run on one machine, with its max error against eager fp32.

    python benchmarks/cpu_fastpath.py                  # ffhq-1024, writes benchmarks/results/cpu_fastpath_*
    python benchmarks/cpu_fastpath.py --preset tiny    # a quick check that every candidate runs

What each candidate gave - including what did not help - is the record behind the CPU choice of
backend "auto"; `alae-rt bench` then measures the chosen backend routinely.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from alae_rt import Runtime
from alae_rt.bench import machine_info, time_call, unused_stem
from alae_rt.errors import InputError


def _candidates(onnx_dir: str | None) -> list[tuple[str, str, str, dict, bool]]:
    """(label, backend, dtype, backend options, channels_last)."""
    cands = [
        ("official order (baseline)", "official", "fp32", {}, False),
        ("eager", "eager", "fp32", {}, False),
        ("eager, channels_last", "eager", "fp32", {}, True),
        ("eager bf16", "eager", "bf16", {}, False),
        ("torch.compile (the compile backend)", "compile", "fp32", {"freezing": False}, False),
        ("torch.compile, channels_last", "compile", "fp32", {"freezing": False}, True),
        ("torch.compile + freezing", "compile", "fp32", {"freezing": True}, False),
        ("torch.compile + freezing, channels_last", "compile", "fp32", {"freezing": True}, True),
        ("torch.compile + freezing bf16", "compile", "bf16", {"freezing": True}, False),
    ]
    if onnx_dir:
        cands.append(("onnxruntime (CPU provider, full graph optimisation)", "onnxruntime", "fp32",
                      {"onnx_dir": onnx_dir}, False))
    return cands


def _export_onnx(model, folder: Path) -> str | None:
    """The ONNX files of the onnxruntime candidate (exported once; None without the export tools)."""
    try:
        from alae_rt.export.onnx_export import export_onnx
    except ImportError as exc:
        print(f"onnxruntime candidate skipped: {exc}", file=sys.stderr)
        return None
    if not (folder / "generator.onnx").is_file():
        export_onnx(model, folder, progress=lambda m: print(m, file=sys.stderr))
    return str(folder)


def run(preset: str, threads: list[int], reps: int, only: list[str] | None, onnx_dir: Path | None) -> dict:
    ref = Runtime.from_config(preset, seed=0)
    x = ref.generate(seeds=[0], noise="const").clamp(-1, 1)
    with torch.inference_mode():
        w = ref.encode(x)
        styles = ref.styles(w)
        noise = ref.noise(1, "const")
        want_w, want_img = ref.backend.encode(x), ref.backend.decode(styles, noise)
    candidates = _candidates(None)
    if not only or any("onnxruntime" in o for o in only):
        with tempfile.TemporaryDirectory() as scratch:
            folder = onnx_dir or Path(scratch)
            candidates = _candidates(_export_onnx(ref.model, folder))
            return _measure(ref, candidates, threads, reps, only, x, styles, noise, want_w, want_img)
    return _measure(ref, candidates, threads, reps, only, x, styles, noise, want_w, want_img)


def _measure(ref, candidates, threads, reps, only, x, styles, noise, want_w, want_img) -> dict:
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for label, backend, dtype, options, channels_last in candidates:
            if only and not any(o in label for o in only):
                continue
            if backend == "onnxruntime":
                options = {**options, "threads": n_threads}
            try:
                model = copy.deepcopy(ref.model)
                if channels_last:
                    model = model.to(memory_format=torch.channels_last)
                rt = Runtime(model, dtype=dtype, backend=backend, backend_options=options)
            except InputError as exc:
                print(f"{label}: skipped ({exc})", file=sys.stderr)
                continue
            xi = x.to(rt.dtype)
            si = styles.to(rt.dtype)
            ni = [m.to(rt.dtype) for m in noise]
            if channels_last:
                xi = xi.contiguous(memory_format=torch.channels_last)
            row = {"candidate": label, "backend": backend, "dtype": dtype, "threads": n_threads,
                   "channels_last": channels_last, "options": options}
            for op, fn, args, want in (("encode", rt.backend.encode, (xi,), want_w),
                                       ("decode", rt.backend.decode, (si, ni), want_img)):
                call = functools.partial(fn, *args)
                start = time.perf_counter()
                with torch.inference_mode():
                    out = call()  # the first call compiles, where there is compiling
                row[f"{op}_first_call_s"] = time.perf_counter() - start
                times = time_call(call, rt.device, warmup=1, min_reps=reps, min_time_s=0)
                row[f"{op}_ms"] = statistics.median(times) * 1e3
                row[f"{op}_max_err"] = float((out.float() - want).abs().max())
                print(f"{label:45s} threads={n_threads} {op}: {row[f'{op}_ms']:8.0f} ms  "
                      f"err {row[f'{op}_max_err']:.1e}  first call {row[f'{op}_first_call_s']:.0f} s", flush=True)
            rows.append(row)
            del rt, model
    for row in rows:
        base = next((r for r in rows if r["backend"] == "official" and r["threads"] == row["threads"]), None)
        for op in ("encode", "decode"):
            row[f"{op}_vs_official"] = base[f"{op}_ms"] / row[f"{op}_ms"] if base else None
    return {"machine": machine_info(torch.device("cpu")), "preset": ref.config.name, "batch": 1, "rows": rows}


def write(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    m = report["machine"]
    threads = "-".join(sorted({str(r["threads"]) for r in report["rows"]}))
    stem = unused_stem(out, f"cpu_fastpath_{report['preset']}_{threads}threads_{m['date'][:10]}")
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# CPU fast path: {report['preset']}, batch 1", "",
             f"- CPU: {m['cpu']} ({m['cpu_count']} cores), date {m['date']}, commit {m['commit']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
             "- x official: speed-up over the official code's way (fp32, separate ops, NCHW) in the same run; "
             "err: max abs difference from eager fp32 (images in [-1, 1] / w); first call includes compiling", "",
             "| candidate | threads | encode ms | x official | err | decode ms | x official | err | "
             "first call s (enc/dec) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(
            f"| {r['candidate']} | {r['threads']} | {r['encode_ms']:.0f} | {r['encode_vs_official'] or 0:.2f}x | "
            f"{r['encode_max_err']:.1e} | {r['decode_ms']:.0f} | {r['decode_vs_official'] or 0:.2f}x | "
            f"{r['decode_max_err']:.1e} | {r['encode_first_call_s']:.0f} / {r['decode_first_call_s']:.0f} |")
    paths[1].write_text("\n".join(lines) + "\n")
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ffhq-1024")
    p.add_argument("--threads", default=str(torch.get_num_threads()), help="comma-separated thread counts")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--only", help="comma-separated substrings of candidate labels")
    p.add_argument("--onnx-dir", type=Path, help="reuse (or keep) the onnxruntime candidate's export here")
    p.add_argument("-o", "--out", default="benchmarks/results")
    args = p.parse_args(argv)
    report = run(args.preset, [int(t) for t in args.threads.split(",")], args.reps,
                 args.only.split(",") if args.only else None, args.onnx_dir)
    for path in write(report, Path(args.out)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
