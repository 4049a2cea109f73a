"""Training throughput: ALAE iterations (steps I + II + III) per second and images/s at each LOD of a preset.

Each LOD is timed in its stable phase (blend 1) on random images, after warm-up steps; the FLOPs of one
iteration are counted with torch's FlopCounterMode, so the achieved GFLOP/s sits next to the images/s.

    python benchmarks/train_throughput.py --preset small-64 --out benchmarks/results

writes train_throughput_<preset>_<device>.json and .md, tagged with device, CPU model, threads, versions,
date and commit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from alae_rt.bench import cpu_model, git_commit, unused_stem
from alae_rt.config import PRESETS, ModelConfig
from alae_rt.training.config import TrainConfig
from alae_rt.training.data import ImageSet
from alae_rt.training.trainer import RunInfo, Trainer


def time_lod(mcfg: ModelConfig, lod: int, batch: int, steps: int, warmup: int, device: torch.device,
             out: Path) -> dict:
    """Seconds per iteration at one LOD (stable phase), and the FLOPs of one iteration."""
    tcfg = TrainConfig(lod_batch=(batch,), lod_images=10**9)
    images = torch.randint(0, 256, (max(batch, 16), mcfg.channels, mcfg.resolution, mcfg.resolution),
                           dtype=torch.uint8)
    trainer = Trainer(mcfg, tcfg, ImageSet(images, []), ImageSet(images[:0], []), out,
                      RunInfo("random", "benchmark", 0), device=device, say=lambda m: None)
    # The stable half of the LOD: blend 1.
    trainer.images_seen = lod * tcfg.lod_images + tcfg.lod_images // 2
    for _ in range(warmup):
        trainer.train_step()
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return {"lod": lod, "resolution": 4 * 2**lod, "batch": batch, "s_per_iteration": dt,
            "images_per_s": batch / dt, "gflop_per_iteration": flops / 1e9, "gflop_per_s": flops / 1e9 / dt}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small-64", choices=list(PRESETS))
    p.add_argument("--batch", type=int, default=16, help="images per iteration (default 16)")
    p.add_argument("--steps", type=int, default=5, help="timed iterations per LOD (default 5)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-resolution", type=int, default=None, help="stop at this resolution")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for the JSON and markdown results (default: print only)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    mcfg = ModelConfig.preset(args.preset)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "alae-rt-train-bench"
    rows = []
    for lod in range(mcfg.layer_count):
        if args.max_resolution and 4 * 2**lod > args.max_resolution:
            break
        row = time_lod(mcfg, lod, args.batch, args.steps, args.warmup, device, scratch)
        rows.append(row)
        print(f"{row['resolution']:>5}px  batch {row['batch']:>3}  {row['images_per_s']:8.2f} img/s  "
              f"{row['s_per_iteration'] * 1000:9.1f} ms/iteration  {row['gflop_per_s']:7.2f} GFLOP/s", flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    result = {
        "benchmark": "train_throughput",
        "preset": args.preset,
        "model_config": json.loads(mcfg.to_json()),
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "dtype": "fp32",
        "rows": rows,
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / unused_stem(out, f"train_throughput_{args.preset}_{device.type}")
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        lines = [f"# Training throughput: {args.preset} on {device_name}", "",
                 f"{device}, {result['threads']} threads, torch {result['torch']}, fp32, commit {result['commit']}, "
                 f"{result['date']}. One iteration = ALAE steps I (E, D + R1) + II (F, G) + III (E, G).", "",
                 "| resolution | batch | images/s | ms / iteration | GFLOP / iteration | GFLOP/s |",
                 "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['resolution']} | {r['batch']} | {r['images_per_s']:.2f} | {r['s_per_iteration'] * 1e3:.1f} | "
                  f"{r['gflop_per_iteration']:.2f} | {r['gflop_per_s']:.2f} |" for r in rows]
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
