"""Ahead-of-time build of modulated_conv's autotune configs for a GPU that is not here (default sm_90, Hopper),
at the ffhq-1024 layer shapes: each config's shared memory (a block may have 232,448 B on an H100/H200),
registers, spills and whether the PTX uses wgmma; configs that cannot launch are marked, so that they are pruned
before a GPU is had. Runs on a CPU: Triton's wheel ships ptxas and cuobjdump.

    python benchmarks/conv_aot.py                      # bf16, batch 32, every config of every layer shape
    python benchmarks/conv_aot.py --smoke              # one layer shape, one config (the test's dry run)

Writes conv_aot_sm90_<dtype>_<date>_<commit>.json and .md under benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

SHARED_MAX = 232_448  # bytes of shared memory a block may have on sm_90 (227 KiB)
REGS_MAX = 65_536  # 32-bit registers an SM has: a block's warps * 32 threads * registers a thread must fit
DTYPES = {"bf16": "bf16", "fp16": "fp16"}
ARCHS = {90: "sm_90a"}


def layer_shapes(batch: int, preset: str = "ffhq-1024") -> list[dict]:
    """The modulated_conv calls of the triton backend's conv=gemm path: (mode, cin, cout, input h) per layer."""
    from alae_rt import ModelConfig

    cfg = ModelConfig.preset(preset)
    seen, out = set(), []
    r = 4
    prev = None
    for i, c in enumerate(cfg.generator_channels):
        if i > 0:
            out.append(("up", prev, c, r // 2))
        out.append(("same", c, c, r))
        prev, r = c, r * 2
    r = cfg.resolution
    for cin, cout in cfg.encoder_channels:
        out.append(("same", cin, cin, r))
        out.append(("down", cin, cout, r))
        r //= 2
    rows = []
    for mode, cin, cout, h in out:
        if (mode, cin, cout, h) in seen:
            continue
        seen.add((mode, cin, cout, h))
        ho = h if mode != "down" else h // 2
        rows.append({"mode": mode, "cin": cin, "cout": cout, "h": h, "M": batch * ho * ho})
    return rows


def compile_config(shape: dict, config, dtype: str, arch: int) -> dict:
    """One config of one layer shape built for `arch`: shared memory, registers, spills, wgmma, build seconds."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from alae_rt.kernels._modulated_conv_triton import modulated_conv_kernel
    from alae_rt.kernels.modulated_conv import GEOMETRY, MIN_BLOCK_M

    mode_id, taps_w, stride, _ = GEOMETRY[shape["mode"]]
    h, cin, cout = shape["h"], shape["cin"], shape["cout"]
    ho = h // 2 if shape["mode"] == "down" else h
    kw = config.kwargs
    ptr = "*" + dtype
    signature = {
        "x_ptr": ptr, "x_stride_n": "i32", "mean_ptr": "*fp32", "scale_ptr": "*fp32", "shift_ptr": "*fp32",
        "w_ptr": ptr, "noise_ptr": ptr, "noise_stride_n": "i32", "nw_ptr": ptr, "bias_ptr": ptr, "out_ptr": ptr,
        "part_ptr": "*fp32", "M": "i32", "CIN": "i32", "COUT": "i32", "H": "i32", "W": "i32", "HO": "i32",
        "WO": "i32", "SLOTS": "i32",
    }
    up = shape["mode"] == "up"
    ints = {"x_stride_n": h * h * cin, "noise_stride_n": (2 * h if up else ho) ** 2, "M": shape["M"], "CIN": cin,
            "COUT": cout, "H": h, "W": h, "HO": ho, "WO": ho, "SLOTS": -(-(ho * ho) // MIN_BLOCK_M) + 1}
    constexprs = {
        "MODE": mode_id, "TAPS_W": taps_w, "STRIDE": stride, "HAS_MOD": True,
        "ONE_SAMPLE_TILES": (ho * ho) % kw["BLOCK_M"] == 0, "HAS_NOISE": shape["mode"] == "same", "HAS_BIAS": True,
        "ACT": not up, "STATS": not up, "SLOPE": 0.2, "INPUT_PRECISION": "tf32", "DOT_FP32": False, **kw,
    }
    for k in constexprs:
        signature[k] = "constexpr"
    names = list(signature)
    # What the JIT would specialise: 16-aligned pointers, integers that are multiples of 16.
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k, t in signature.items()
             if t.startswith("*") or (k in ints and ints[k] % 16 == 0 and ints[k] > 0)}
    t0 = time.perf_counter()
    row = {**shape, "BLOCK_M": kw["BLOCK_M"], "BLOCK_N": kw["BLOCK_N"], "BLOCK_K": kw["BLOCK_K"],
           "num_warps": config.num_warps, "num_stages": config.num_stages}
    try:
        src = ASTSource(fn=modulated_conv_kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    except Exception as e:  # a build that fails (out of shared memory at build time, an unsupported shape)
        return {**row, "built": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                "build_s": round(time.perf_counter() - t0, 2), "launches": False}
    shared = int(compiled.metadata.shared)
    regs, spill_st, spill_ld = _resource_usage(compiled.asm["ptx"], arch)
    wgmma = "wgmma.mma_async" in compiled.asm["ptx"]
    threads = config.num_warps * 32
    launches = shared <= SHARED_MAX and (regs is None or regs * threads <= REGS_MAX)
    return {**row, "built": True, "shared_bytes": shared, "registers": regs, "spill_stores_bytes": spill_st,
            "spill_loads_bytes": spill_ld, "wgmma": wgmma, "launches": launches,
            "build_s": round(time.perf_counter() - t0, 2)}


def _ptxas(arch: int) -> str:
    """The ptxas Triton itself builds with for `arch` (its wheel ships two; sm_90 and up take the newer)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def _resource_usage(ptx: str, arch: int) -> tuple[int | None, int | None, int | None]:
    """(registers a thread, spill store bytes, spill load bytes) from `ptxas -v` on the kernel's PTX."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([_ptxas(arch), "-v", f"--gpu-name={ARCHS.get(arch, f'sm_{arch}')}", str(src),
                               "-o", str(Path(tmp) / "k.cubin")], capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas: {text.strip().splitlines()[0] if text.strip() else proc.returncode}")
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return (int(regs.group(1)) if regs else None, int(spills.group(1)) if spills else None,
            int(spills.group(2)) if spills else None)


def markdown(report: dict) -> str:
    lines = [f"# modulated_conv configs built for sm_{report['arch']} ({report['dtype']}, batch {report['batch']})",
             "", f"{report['date']}, commit {report['commit']}, triton {report['triton']}, built on "
             f"{report['machine']}. Shared memory limit {SHARED_MAX:,} B a block; registers x threads <= "
             f"{REGS_MAX:,}. {report['launchable']} of {len(report['rows'])} builds can launch.", "",
             "| mode | cin | cout | h | M | BM x BN x BK | warps | stages | shared B | regs | spills st/ld B | wgmma "
             "| launches | build s |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|---|---:|"]
    for r in report["rows"]:
        if not r["built"]:
            lines.append(f"| {r['mode']} | {r['cin']} | {r['cout']} | {r['h']} | {r['M']} | {r['BLOCK_M']}x"
                         f"{r['BLOCK_N']}x{r['BLOCK_K']} | {r['num_warps']} | {r['num_stages']} | - | - | - | - "
                         f"| no: {r['error']} | {r['build_s']} |")
            continue
        lines.append(f"| {r['mode']} | {r['cin']} | {r['cout']} | {r['h']} | {r['M']} | {r['BLOCK_M']}x"
                     f"{r['BLOCK_N']}x{r['BLOCK_K']} | {r['num_warps']} | {r['num_stages']} | {r['shared_bytes']:,} "
                     f"| {r['registers']} | {r['spill_stores_bytes']}/{r['spill_loads_bytes']} | "
                     f"{'yes' if r['wgmma'] else 'no'} | {'yes' if r['launches'] else '**no**'} | {r['build_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 to build for (default 90)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="storage dtype (default bf16)")
    parser.add_argument("--batch", type=int, default=32, help="batch the rows are flattened over (default 32)")
    parser.add_argument("--all", action="store_true",
                        help="every config of the autotune list, not only those prune() keeps for the layer")
    parser.add_argument("--smoke", action="store_true", help="one layer shape (16 channels at 1024), one config")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="folder for the JSON and markdown (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch: a positive integer, got {args.batch}")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: the interpreter builds nothing for a GPU (unset it)")
    import triton

    from alae_rt.bench import cpu_model, git_commit, unused_stem
    from alae_rt.kernels._modulated_conv_triton import configs, prune

    shapes = layer_shapes(args.batch)
    if args.smoke:
        shapes = [s for s in shapes if (s["mode"], s["h"]) == ("same", 1024)]
    rows: list[dict] = []
    report = {"arch": args.arch, "dtype": args.dtype, "batch": args.batch, "triton": triton.__version__,
              "machine": cpu_model(), "date": dt.date.today().isoformat(), "commit": git_commit(),
              "rows": rows, "launchable": 0}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = unused_stem(args.out, f"conv_aot_sm{args.arch}_{args.dtype}_{report['date'].replace('-', '')}_"
                                 f"{report['commit']}")
    for shape in shapes:
        ho = shape["h"] // 2 if shape["mode"] == "down" else shape["h"]
        named = {"M": shape["M"], "CIN": shape["cin"], "COUT": shape["cout"], "HO": ho, "WO": ho}
        kept = configs() if args.all else prune(configs(), named)
        for config in kept[-1:] if args.smoke else kept:
            rows.append(compile_config(shape, config, DTYPES[args.dtype], args.arch))
            report["launchable"] = sum(r["launches"] for r in rows)
            print(json.dumps(rows[-1]), flush=True)
            # rewritten after each build: a run cut off keeps what it had
            (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
            (args.out / f"{stem}.md").write_text(markdown(report))
    print(f"{report['launchable']} of {len(rows)} builds can launch; wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
