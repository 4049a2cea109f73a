"""The small-data ablation: held-out reconstruction of StyleALAE runs trained on the sample faces with parts of the
recipe on and off, beside the mean-face and PCA baselines on the same split (alae_rt.evaluation, as `alae-rt eval`).

Each run is an `alae-rt train` folder; this script reads its checkpoint (EMA weights, fp32), the command that made
it, the images it saw and its training time, and scores it on the held-out faces (the last N of the folder, which
training never saw). The runs themselves are made with the commands recorded in the table, e.g.

    C="--data ../shared/data/faces128 --preset small-64 --holdout 11 --lod-images 2000 --lod-batch 32,32,32,16,16 \
       --lr 0.002 --ema-half-life 3000 --threads 1 --steps 812"
    alae-rt train $C -o out/abl/paper
    alae-rt train $C --pixel-recon 1 -o out/abl/pixel
    alae-rt train --resume out/abl/pixel --refine-encoder --refine-steps 600      # refinement on top

    .venv/bin/python benchmarks/ablation_small_data.py --faces ../shared/data/faces128 --holdout 11 \
        paper=out/abl/paper pixel=out/abl/pixel --results benchmarks/results/ablation_small_data
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from alae_rt.bench import cpu_model
from alae_rt.checkpoint import load_checkpoint
from alae_rt.cli.grids import Grid, render
from alae_rt.evaluation import baselines, load_split, model_reconstructions, psnr_db, ssim
from alae_rt.images import save_image
from alae_rt.runtime import Runtime
from alae_rt.training.bundle import reproducing_command

CHECKPOINT = "checkpoint.safetensors"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def score_run(name: str, run: Path, split) -> tuple[dict, np.ndarray]:
    ckpt = load_checkpoint(run / CHECKPOINT)
    meta = ckpt.metadata
    rt = Runtime.load(run / CHECKPOINT)
    rec = model_reconstructions(rt, split.held)
    train_rec = model_reconstructions(rt, split.train)
    refine = meta.get("encoder_refinement")
    row = {
        "name": name,
        # the command with --steps where the run ended (it may have been stopped early or resumed further)
        "command": reproducing_command(meta.get("command", ""), meta.get("steps", 0)),
        "refinement": refine,
        "images_seen": meta.get("images_seen"),
        "steps": meta.get("steps"),
        "trained_resolution": meta.get("trained_resolution"),
        "wall_time_min": round(meta.get("wall_time_s", 0.0) / 60, 1),
        "heldout_psnr_db": psnr_db(split.held, rec),
        "heldout_ssim": ssim(split.held, rec),
        "train_psnr_db": psnr_db(split.train, train_rec),
    }
    return row, rec


def markdown(rows: list[dict], base: list, info: dict) -> str:
    lines = [
        f"# Small-data ablation: held-out reconstruction on {info['faces']} at {info['resolution']}x"
        f"{info['resolution']}",
        "",
        f"{info['heldout']} held-out faces ({', '.join(info['heldout_files'])}), {info['train']} training faces. "
        f"Machine: {info['machine']}; {info['date']}; commit {info['commit']}. Model reconstructions through the "
        "Runtime (EMA weights, fp32, constant noise); PSNR is the mean over the faces of each face's PSNR. Training "
        "time is the wall clock of the iterations on two cores shared by up to five runs at once: compare images "
        "seen, not minutes. Refinements ran on copies of the trained run folders (`cp -r RUN RUN-refined`).",
        "",
        "| run | held-out PSNR (dB) | SSIM | training-face PSNR (dB) | images seen | training time (min) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | **{r['heldout_psnr_db']:.2f}** | {r['heldout_ssim']:.3f} | "
                     f"{r['train_psnr_db']:.2f} | {r['images_seen']} | {r['wall_time_min']} |")
    lines += ["", "Linear baselines on the same faces:", "", "| baseline | code size | held-out PSNR (dB) | SSIM |",
              "|---|---|---|---|"]
    for b in base:
        lines.append(f"| {b.name} | {b.numbers or '-'} | {b.psnr_db:.2f} | {b.ssim:.3f} |")
    lines += ["", "Commands:", ""]
    for r in rows:
        lines.append(f"- {r['name']}: `{r['command']}`" +
                     (f", then `{r['refinement'].get('command', '')}` ({r['refinement']['steps']} refinement steps)"
                      if r["refinement"] else ""))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR", help="runs to score, in table order")
    p.add_argument("--faces", required=True, help="the training folder (its last --holdout images are held out)")
    p.add_argument("--holdout", type=int, required=True)
    p.add_argument("--results", required=True, help="path prefix: writes .json, .md and a reconstruction grid .png")
    args = p.parse_args()
    pairs = [r.split("=", 1) for r in args.runs]
    if any(len(pr) != 2 for pr in pairs):
        sys.exit("runs are NAME=RUN_DIR")
    first = load_checkpoint(Path(pairs[0][1]) / CHECKPOINT).config
    split = load_split(args.faces, first.resolution, first.channels, args.holdout)
    rows, recs = [], []
    for name, run in pairs:
        row, rec = score_run(name, Path(run), split)
        rows.append(row)
        recs.append(rec)
        print(f"{name}: held-out {row['heldout_psnr_db']:.2f} dB, SSIM {row['heldout_ssim']:.3f}", file=sys.stderr)
    base = baselines(split, (8, first.latent_size), mirror_size=first.latent_size)
    info = {"faces": Path(args.faces).name, "resolution": first.resolution, "heldout": len(split.held),
            "heldout_files": split.held_names, "train": len(split.train),
            "machine": f"{cpu_model()}, {platform.machine()}", "date": datetime.date.today().isoformat(),
            "commit": commit()}
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"info": info, "runs": rows,
                                                    "baselines": [vars(b) for b in base]}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, base, info))
    # One column per held-out face: the face, then each run's reconstruction, in table order (rows numbered, the
    # caption names them).
    rows_img = [list(split.held), *[list(r) for r in recs]]
    labels = [["held-out face"] + [""] * (len(split.held) - 1)]
    labels += [[f"run {i}"] + [""] * (len(split.held) - 1) for i in range(1, len(recs) + 1)]
    grid = Grid(rows_img, header=split.held_names, labels=labels,
                caption=[f"run {i}: {r['name']} - {r['heldout_psnr_db']:.2f} dB" for i, r in enumerate(rows, 1)])
    save_image(render(grid)[0], out.with_suffix(".png"))
    print(markdown(rows, base, info))


if __name__ == "__main__":
    main()
