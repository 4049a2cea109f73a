"""Our CPU paths against the CPU runtimes a user would pick instead (onnxruntime, OpenVINO), in one run.

    python benchmarks/cpu_peers.py                        # ffhq-1024, batch 1, 2 threads: writes benchmarks/results/
    python benchmarks/cpu_peers.py --preset tiny --reps 3 --out /tmp/peers   # a quick check that every path runs

Random weights of the preset (seed 0; speed does not depend on their values), exported once with the project's
exporter (`--onnx-dir` keeps or reuses the export); every runtime gets the same inputs. The candidates are timed
interleaved - one call of each in turn, `--reps` rounds - so that a shared machine's drift falls on all of them
alike; the table gives each one's median and range in ms, the speed against OpenVINO's path of the same precision
class, and the max abs error against eager fp32 (images in [-1, 1]; w). Writes `cpu_peers_<preset>_<cpu>_<date>_
<commit>.json` and `.md`, tagged with the CPU, its bf16/AMX flags, threads, library versions, date and commit.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

from alae_rt import Runtime
from alae_rt.bench import machine_info, save_record
from alae_rt.errors import InputError
from alae_rt.flops import count_flops

ROOT = Path(__file__).resolve().parents[1]
OPS = ("decode", "encode")
LABELS = {"decode": "generator (styles + noise -> image)", "encode": "encoder (image -> w)"}


def candidates(onnx_dir: Path, ov_default: str) -> list[tuple[str, str, str, str, dict]]:
    """(label, precision class, backend, dtype, backend options). On a CPU `auto` picks the fastest of the fp32
    rows by this same kind of measurement (alae_rt.backends.measure_cpu_backends)."""
    return [
        ("Runtime fp32 (eager)", "fp32", "eager", "fp32", {}),
        ("Runtime fp32 (eager, channels_last)", "fp32", "eager", "fp32", {"channels_last": True}),
        ("Runtime fp32 (compile)", "fp32", "compile", "fp32", {}),
        ("Runtime fp32 (compile, channels_last)", "fp32", "compile", "fp32", {"channels_last": True}),
        ("onnxruntime", "fp32", "onnxruntime", "fp32", {"onnx_dir": onnx_dir}),
        ("OpenVINO f32", "fp32", "openvino", "fp32", {"onnx_dir": onnx_dir, "precision": "f32"}),
        ("Runtime bf16 (eager)", "reduced", "eager", "bf16", {}),
        ("Runtime bf16 (eager, channels_last)", "reduced", "eager", "bf16", {"channels_last": True}),
        ("Runtime bf16 (compile, freezing)", "reduced", "compile", "bf16", {"freezing": True}),
        (f"OpenVINO default ({ov_default})", "reduced", "openvino", "fp32", {"onnx_dir": onnx_dir,
                                                                             "precision": ov_default}),
    ]


def cpu_flags() -> list[str]:
    """The CPU's reduced-precision flags (bf16 and AMX decide what OpenVINO's default precision is)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags.split(":", 1)[1].split() if f.startswith(("amx", "avx512_bf16", "avx512_fp16")))


def run(preset: str, threads: int, reps: int, onnx_dir: Path | None, only: list[str] | None) -> dict:
    import openvino

    torch.set_num_threads(threads)
    machine = machine_info(torch.device("cpu"))  # the commit the run starts at
    ref = Runtime.from_config(preset, seed=0)
    cfg = ref.config
    scratch = None
    if onnx_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="alae-rt-peers-")
        onnx_dir = Path(scratch.name)
    if not (onnx_dir / "generator.onnx").is_file():
        from alae_rt.export.onnx_export import export_onnx

        print(f"exporting {cfg.name} to {onnx_dir}...", file=sys.stderr)
        export_onnx(ref.model, onnx_dir, progress=lambda m: print(m, file=sys.stderr))
    ov_default = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()

    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        styles = ref.truncate(ref.map(torch.randn(1, cfg.latent_size, generator=gen)))  # [1, 2L, D]
        noise = ref.noise(1, "const")
        x = ref.decode(styles, noise=noise).clamp(-1, 1)  # [1, C, R, R]: a generated face to encode
        want = {"decode": ref.backend.decode(styles, noise), "encode": ref.backend.encode(x)}

    runs = []
    for label, kind, backend, dtype, options in candidates(onnx_dir, ov_default):
        if only and not any(o in label for o in only):
            continue
        if backend in ("onnxruntime", "openvino"):
            options = {**options, "threads": threads}
        start = time.perf_counter()
        try:
            rt = Runtime(copy.deepcopy(ref.model), dtype=dtype, backend=backend, backend_options=options)
        except InputError as exc:
            print(f"{label}: skipped ({exc})", file=sys.stderr)
            continue
        args = {"decode": (styles.to(rt.dtype), [m.to(rt.dtype) for m in noise]), "encode": (x.to(rt.dtype),)}
        calls = {op: functools.partial(getattr(rt.backend, op), *args[op]) for op in OPS}
        row = {"candidate": label, "class": kind, "backend": rt.backend.name, "dtype": dtype,
               "options": {k: str(v) for k, v in options.items()}, "times_ms": {op: [] for op in OPS}}
        with torch.inference_mode():
            for op in OPS:
                out = calls[op]()  # the first call compiles, where something compiles
                row[f"{op}_max_err"] = float((out.float() - want[op]).abs().max())
                calls[op]()
        row["setup_s"] = round(time.perf_counter() - start, 1)
        print(f"{label}: ready in {row['setup_s']} s (backend {row['backend']}); errors "
              f"decode {row['decode_max_err']:.1e}, encode {row['encode_max_err']:.1e}", file=sys.stderr)
        runs.append((row, calls))

    # Interleaved: round r calls every candidate once (A B C ... A B C ...).
    with torch.inference_mode():
        for r in range(reps):
            for row, calls in runs:
                for op in OPS:
                    start = time.perf_counter()
                    calls[op]()
                    row["times_ms"][op].append((time.perf_counter() - start) * 1e3)
            print(f"round {r + 1}/{reps}: " + ", ".join(
                f"{row['candidate']} {row['times_ms']['decode'][-1]:.0f}/{row['times_ms']['encode'][-1]:.0f}"
                for row, _ in runs), file=sys.stderr)
    rows = [row for row, _ in runs]
    for row in rows:
        for op in OPS:
            row[f"{op}_ms"] = statistics.median(row["times_ms"][op])
    for row in rows:
        peer = next((p for p in rows if p["backend"] == "openvino" and p["class"] == row["class"]), None)
        for op in OPS:
            row[f"{op}_vs_openvino"] = peer[f"{op}_ms"] / row[f"{op}_ms"] if peer else None
    if scratch is not None:
        scratch.cleanup()
    for dist in ("openvino", "onnxruntime"):
        machine["versions"][dist] = metadata.version(dist)
    machine["cpu_flags"] = cpu_flags()
    machine["threads"] = threads
    flops = count_flops(cfg)
    return {"benchmark": "cpu_peers", "preset": cfg.name, "batch": 1, "reps": reps, "machine": machine,
            "openvino_default_precision": ov_default,
            "gflop_per_image": {op: round(flops[op] / 1e9, 2) for op in OPS}, "rows": rows}


def profile_encoder(preset: str, threads: int, onnx_dir: Path, channels_last: bool, top: int = 12) -> dict:
    """The fp32 encoder by op, ours (torch.profiler over eager, NCHW or channels-last) beside OpenVINO's (its
    per-node performance counters, by node and kernel type): where the time goes, one call each after a warm-up."""
    import openvino
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    ref = Runtime.from_config(preset, seed=0, backend_options={"channels_last": channels_last})
    cfg = ref.config
    x = torch.rand(1, cfg.channels, cfg.resolution, cfg.resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        ref.backend.encode(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            start = time.perf_counter()
            ref.backend.encode(x)
            ours_ms = (time.perf_counter() - start) * 1e3
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    ours = [{"op": e.key, "shapes": str(e.input_shapes)[:90], "calls": e.count, "ms": e.self_cpu_time_total / 1e3}
            for e in events[:top]]
    core = openvino.Core()
    compiled = core.compile_model(str(onnx_dir / "encoder.onnx"), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True,
        "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    request.infer({"images": x.numpy()})
    start = time.perf_counter()
    request.infer({"images": x.numpy()})
    theirs_ms = (time.perf_counter() - start) * 1e3
    by_type: dict[tuple[str, str], list[float]] = {}
    for info in request.get_profiling_info():
        by_type.setdefault((info.node_type, info.exec_type), []).append(info.real_time.total_seconds() * 1e3)
    theirs = sorted(({"op": f"{t} ({e})", "calls": len(v), "ms": sum(v)} for (t, e), v in by_type.items()),
                    key=lambda r: -r["ms"])[:top]
    return {"channels_last": channels_last, "ours_ms": ours_ms, "openvino_ms": theirs_ms, "ours": ours,
            "openvino": theirs}


def profile_markdown(prof: dict) -> str:
    layout = "channels-last" if prof["channels_last"] else "NCHW"
    lines = ["", f"## fp32 encoder by op: eager ({layout}) {prof['ours_ms']:.0f} ms, OpenVINO f32 "
             f"{prof['openvino_ms']:.0f} ms (one call each, profiled)", "",
             "| ours: op | input shapes | calls | ms | | OpenVINO: node (kernel) | nodes | ms |",
             "|---|---|---:|---:|---|---|---:|---:|"]
    for a, b in zip(prof["ours"], prof["openvino"] + [None] * len(prof["ours"])):
        right = f"{b['op']} | {b['calls']} | {b['ms']:.1f}" if b else " | | "
        lines.append(f"| {a['op']} | {a['shapes']} | {a['calls']} | {a['ms']:.1f} | | {right} |")
    return "\n".join(lines) + "\n"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# CPU peers: {report['preset']}, batch 1, {m['threads']} threads", "",
             f"- CPU: {m['cpu']} ({m['cpu_count']} logical CPUs; flags {', '.join(m['cpu_flags']) or 'none'}), "
             f"date {m['date']}, commit {m['commit']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
             f"- median (min-max) of {report['reps']} interleaved calls per candidate, ms; x OpenVINO: its time over "
             "ours for the same precision class (fp32: OpenVINO f32; reduced: OpenVINO's default, "
             f"{report['openvino_default_precision']} on this CPU); err: max abs against eager fp32 (images in "
             "[-1, 1]; w)",
             "- the machine is shared with other work: compare rows of one run, not runs", "",
             "| candidate | backend | generator ms | x OpenVINO | err | encoder ms | x OpenVINO | err |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        cells = []
        for op in OPS:
            t = r["times_ms"][op]
            cells += [f"{r[f'{op}_ms']:.0f} ({min(t):.0f}-{max(t):.0f})", f"{r[f'{op}_vs_openvino'] or 0:.2f}x",
                      f"{r[f'{op}_max_err']:.1e}"]
        how = f"{r['backend']} {r['options'].get('precision', r['dtype'])}"
        lines.append(f"| {r['candidate']} | {how} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ffhq-1024")
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    p.add_argument("--reps", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--only", help="comma-separated substrings of candidate labels")
    p.add_argument("--onnx-dir", type=Path, help="reuse (or keep) the export of the preset (seed 0) here")
    p.add_argument("--profile", choices=("nchw", "channels_last"),
                   help="also profile the fp32 encoder by op, eager in this layout beside OpenVINO f32 (needs "
                        "--onnx-dir)")
    p.add_argument("-o", "--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.threads < 1 or args.reps < 1:
        p.error("--threads and --reps must be >= 1")
    if args.profile and not args.onnx_dir:
        p.error("--profile needs --onnx-dir (the export OpenVINO's encoder is read from)")
    report = run(args.preset, args.threads, args.reps, args.onnx_dir, args.only.split(",") if args.only else None)
    if args.profile:
        report["profile"] = profile_encoder(args.preset, args.threads, args.onnx_dir, args.profile == "channels_last")
    m = report["machine"]
    cpu = "-".join(m["cpu"].lower().replace("(r)", "").split())[:40] or "cpu"
    text = markdown(report) + (profile_markdown(report["profile"]) if "profile" in report else "")
    save_record(args.out, f"cpu_peers_{report['preset']}_{cpu}_{m['date'][:10]}_{m['commit'][:12]}", report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
