"""Bundle a finished run as the default model: fp16 EMA weights, a sample grid and a model card with its PSNR.

    python -m alae_rt.training.bundle RUN_DIR [--out alae_rt/models] [--hardware "..."]

The held-out PSNR is measured here, through the Runtime on the fp16 file (fp32 compute, constant noise), on
the run's held-out images, so anyone can check it with `alae-rt reconstruct` on the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch

import alae_rt
from alae_rt.bench import cpu_model
from alae_rt.checkpoint import load_checkpoint, save_checkpoint
from alae_rt.evaluation import default_holdout, evaluate, pca_reconstruct, psnr_db, ssim
from alae_rt.images import make_grid, read_image, save_image
from alae_rt.runtime import Runtime
from alae_rt.training.trainer import CHECKPOINT_FILE, STATE_FILE, read_state

MAX_BYTES = 25 * 1024 * 1024
GRID_SEEDS = range(16)


def heldout_files(run_meta: dict, state_meta: dict) -> list[Path]:
    """The run's held-out images: the last `holdout` readable images of its data folder, in path order."""
    from alae_rt.errors import InputError

    files = []
    for p in sorted(q for q in Path(run_meta["data"]).rglob("*") if q.is_file() and not q.name.startswith(".")):
        try:
            read_image(p)
        except InputError:
            continue
        files.append(p)
    count = run_meta["holdout"] if run_meta["holdout"] is not None else default_holdout(len(files))
    return files[len(files) - count:] if count else []


def bundle(run: Path, out: Path, hardware: str) -> dict:
    """Write out/default.safetensors, out/samples.png and out/MODEL_CARD.md from the run; returns the figures."""
    _, state_meta = read_state(run / STATE_FILE)
    run_meta = json.loads(state_meta["run"])
    ckpt = load_checkpoint(run / CHECKPOINT_FILE)
    out.mkdir(parents=True, exist_ok=True)
    provenance = dict(ckpt.metadata)
    provenance["description"] = (f"alae-rt default model: StyleALAE {ckpt.config.resolution}x{ckpt.config.resolution} "
                                 f"trained on {provenance['train_images']} aligned faces, {provenance['steps']} steps "
                                 "(EMA weights, fp16)")
    provenance["dataset"] = Path(provenance["dataset"]).name  # no machine paths in the bundled file
    target = out / "default.safetensors"
    save_checkpoint(target, ckpt.state, ckpt.config, provenance, dtype=torch.float16)
    size = target.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{target}: {size / 1e6:.1f} MB is over the 25 MB limit")

    rt = Runtime.load(target)
    held = heldout_files(run_meta, state_meta)
    psnr = ssim_value = None
    rows, table_rows = [], []
    if held:
        x = rt.prepare_images([str(p) for p in held])
        rec = rt.decode(rt.encode(x), noise="const")
        originals, recs = rt.to_uint8(x), rt.to_uint8(rec)
        psnr, ssim_value = psnr_db(originals, recs), ssim(originals, recs)
        per_row = 4
        for i in range(0, len(held), per_row):
            rows.append([img for pair in zip(originals[i:i + per_row], recs[i:i + per_row]) for img in pair])
        table_rows = heldout_comparison(rt, run_meta, ckpt.config, out)
    baseline = next((r["psnr_db"] for r in table_rows if r["numbers"] == 0), None)
    samples = rt.to_uint8(rt.generate(seeds=list(GRID_SEEDS), noise="const"))
    sample_rows = [list(samples[i:i + 8]) for i in range(0, len(samples), 8)]
    blank = np.full_like(samples[0], 255)
    width = max(len(r) for r in sample_rows + rows)
    grid_rows = [r + [blank] * (width - len(r)) for r in sample_rows + rows]
    save_image(make_grid(grid_rows), out / "samples.png")
    figures = {
        "bytes": size,
        "heldout_psnr_db": psnr,
        "heldout_ssim": ssim_value,
        "mean_face_psnr_db": baseline,
        "comparison": table_rows,
        "refinement": provenance.get("encoder_refinement"),
        "heldout_files": [p.name for p in held],
        "resolution": ckpt.config.resolution,
        "config": ckpt.config.to_dict(),
        "parameters": sum(v.numel() for v in ckpt.state.values()),
        "steps": provenance["steps"],
        "images_seen": provenance["images_seen"],
        "wall_time_s": provenance["wall_time_s"],
        "command": reproducing_command(provenance["command"], provenance["steps"]),
        "started_with": provenance["command"],
        "train_images": provenance["train_images"],
        "dataset": provenance["dataset"],
        "hardware": hardware,
        "torch": torch.__version__,
        "train_config": provenance["train_config"],
        "trained_resolution": provenance["trained_resolution"],
        "blend": provenance["blend"],
    }
    (out / "MODEL_CARD.md").write_text(model_card(figures))
    return figures


def heldout_comparison(rt: Runtime, run_meta: dict, cfg, out: Path) -> list[dict]:
    """The bundled model beside the mean face and PCA of the training faces on the same held-out faces (what
    `alae-rt eval` prints), and heldout.png: each held-out face, its reconstruction and its PCA projection."""
    from alae_rt.cli.grids import Grid, render

    result = evaluate(rt, run_meta["data"], run_meta["holdout"], name="this model")
    split, rec = result["_split"], result["_reconstructions"]
    d = cfg.latent_size
    linear = pca_reconstruct(split.train, split.held, min(d, len(split.train) - 1))
    grid = Grid([[o, m, p] for o, m, p in zip(split.held, rec, linear)],
                header=["held-out face", "this model", f"PCA, {d} components"])
    save_image(render(grid)[0], out / "heldout.png")
    return [result["model"], result["model_on_training_faces"], *result["baselines"]]


def run_folder(command: str) -> str:
    """The run folder a training command names (-o / --out), for the card's bundling step."""
    found = re.search(r"(?:^|\s)(?:-o|--out)[ =](\S+)", command)
    return found.group(1) if found else "RUN_DIR"


def reproducing_command(command: str, steps: int) -> str:
    """The run's command with --steps set to where it stopped: the schedule depends only on the images shown,
    so a run stopped early (Ctrl-C, SIGTERM) is reproduced by asking for that many steps."""
    return re.sub(r"--steps[ =]\d+", f"--steps {steps}", command)


def recipe_text(t: dict, refinement: dict | None) -> str:
    """The small-data parts of a run's training config, in words (empty for the paper's ALAE)."""
    parts = []
    if t.get("ae_updates_mapping"):
        parts.append("step III also trains F (the official code)")
    if t.get("augment"):
        parts.append(f"augmentation of the real images: {', '.join(t['augment'])}")
    if t.get("diffaug"):
        parts.append(f"DiffAugment on D's inputs: {', '.join(t['diffaug'])}")
    if t.get("pixel_recon"):
        parts.append(f"pixel reconstruction term {t['pixel_recon']} * ||G(E(x)) - x||^2 in step III")
    if refinement:
        parts.append(f"then encoder refinement, G frozen: {refinement['steps']} steps of pixel reconstruction "
                     f"(+ {refinement.get('latent_weight', 1.0)} * latent term), learning rate {refinement.get('lr')}")
    return "; " + "; ".join(parts) if parts else ""


def model_card(f: dict) -> str:
    c, t = f["config"], f["train_config"]
    psnr = f"{f['heldout_psnr_db']:.2f} dB" if f["heldout_psnr_db"] is not None else "n/a (no held-out images)"
    held = f["heldout_files"]
    rows = [
        ("file", f"`default.safetensors`, fp16, {f['bytes'] / 1e6:.1f} MB: EMA weights and `dlatent_avg`"),
        ("architecture", f"preset `{c['name']}`: {f['resolution']}x{f['resolution']} RGB, {c['layer_count']} blocks, "
                         f"startf {c['startf']}, maxf {c['maxf']}, D = {c['latent_size']}, {c['mapping_layers']} "
                         f"mapping layers; {f['parameters'] / 1e6:.2f} M parameters"),
        ("data", f"`shared/data/faces128`: 110 aligned 128x128 FFHQ faces (CC BY-NC-SA 4.0), read at "
                 f"{f['resolution']}x{f['resolution']}; the first {f['train_images']} in file order for training, "
                 f"the last {len(held)} ({', '.join(held)}) held out"),
        ("training", f"ALAE: steps I-III, R1 gamma {t['r1_gamma']}, Adam {tuple(t['adam_betas'])} with "
                     f"learning-rate equalisation (F's lrmul {t.get('mapping_lrmul', 0.01)}), progressive growing "
                     f"from 4x4 ({t['lod_images']} images per LOD, the first half blending in), batch per LOD "
                     f"{list(t['lod_batch'])}, learning rate {list(t['lod_lr'])}, style mixing p "
                     f"{t['style_mixing_prob']}, dlatent_avg beta {t['dlatent_avg_beta']}, EMA half-life "
                     f"{t['ema_half_life_images']:.0f} images, flips" + recipe_text(t, f.get("refinement"))),
        ("length", f"{f['steps']} iterations, {f['images_seen']} images shown, "
                   f"{f['wall_time_s'] / 3600:.2f} h of training (wall clock of the iterations, on cores "
                   "shared with other jobs)"),
        ("hardware", f"{f['hardware']}; torch {f['torch']}, fp32"),
        ("command", f"`{f['command']}`" + ("" if f["command"] == f["started_with"] else
                                            f" (the run was started as `{f['started_with']}` and ended at step "
                                            f"{f['steps']}, continued with `--resume` or stopped early; the schedule "
                                            "depends only on the images shown, so the command above reproduces it)") +
                    (f", then `{f['refinement']['command']}`" if f.get("refinement") else "")),
        ("held-out reconstruction PSNR", f"**{psnr}**: mean over the {len(held)} held-out faces at "
                                         f"{f['resolution']}x{f['resolution']} (Runtime, fp16 weights, fp32 "
                                         "compute, `noise=\"const\"`)" +
                                         ("" if f["mean_face_psnr_db"] is None else
                                          f"; for scale, the mean training face scores "
                                          f"{f['mean_face_psnr_db']:.2f} dB on the same faces")),
    ]
    if f.get("heldout_ssim") is not None:
        rows.append(("held-out SSIM", f"{f['heldout_ssim']:.3f}"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    comparison = ""
    if f.get("comparison"):
        lines = "\n".join(f"| {r['name']} | {r['numbers'] or '-'} | {r['psnr_db']:.2f} | {r['ssim']:.3f} |"
                          for r in f["comparison"])
        comparison = f"""
## Held-out faces beside linear codes

The same {len(held)} held-out faces, reconstructed by this model and by the linear codes a {c['latent_size']}-number
latent has to beat (PCA of the {f['train_images']} training faces); `alae-rt eval --faces ../shared/data/faces128
--holdout {len(held)}` prints this table. `heldout.png`: each face, this model's reconstruction, its PCA projection.

| reconstruction | code size | PSNR (dB) | SSIM |
|---|---|---|---|
{lines}

![held-out faces](heldout.png)
"""
    return f"""# alae-rt default model

A StyleALAE (Adversarial Latent Autoencoder, Pidhorskyi et al., CVPR 2020) trained by `alae-rt train`; it is
what `Runtime.load()`, the CLI without `--checkpoint`, `make demo` and the server use when no weights are given.

| | |
|---|---|
{table}

![samples](samples.png)

`samples.png`: top two rows, generated faces (seeds 0-15, truncation psi 0.7); below, the held-out faces
(never seen in training) each followed by its reconstruction.
{comparison}
## What to expect

{EXPECTATIONS}

Reproduce: `make setup`, then the command{"s" if f.get("refinement") else ""} above from the project root (with
`../shared` beside it), then `python -m alae_rt.training.bundle {run_folder(f["command"])}`.
"""


# Written after looking at the bundled model's grid; keep it true when the model is retrained.
EXPECTATIONS = """\
This is a small model (0.64 M parameters) trained for about an hour and a half on two CPU cores shared with
other jobs, from 99 faces, with the small-data recipe of `alae-rt train` (pixel reconstruction term,
augmentation, DiffAugment; see the README's "Small data" section and `benchmarks/results/ablation_small_data.md`).
It is the pipeline's working default - real, trained weights that encode, reconstruct, edit, mix and generate -
and not a model of face quality:

- Reconstructions are blurry, but they are of the person's colouring and layout: skin tone, hair colour and
  length, background brightness and head position carry over (the dark-skinned man comes back dark-skinned, the
  blonde blonde), features and identity do not. Held-out PSNR is 3.7 dB above the mean face and level with PCA
  of 8 components, 2.5 dB short of PCA with as many components as w has; faces from the training set score
  about the same (no memorisation).
- Generated faces vary from seed to seed in colouring, hair and pose, with strong artefacts (checkerboard
  texture, smeared eyes and mouths).
- Edits along the bundled principal directions change lighting, colouring and hair smoothly (artefacts grow
  towards +-3 sd); with a latent space this young they do not isolate named attributes.

The previous default (the paper's ALAE with F's step multiplier at 0.01, 53 thousand images) scored 15.6 dB;
ALAE needs millions of images shown to reconstruct sharply. For quality, load the official FFHQ / CelebA-HQ
checkpoints (`alae-rt convert model_157.pth -o ffhq.safetensors`) or train longer (the command above with more
`--steps`, or `--resume` in its run folder), or on a GPU."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="the run folder of alae-rt train")
    p.add_argument("--out", default=str(Path(alae_rt.__file__).parent / "models"),
                   help="where to write default.safetensors, samples.png and MODEL_CARD.md")
    p.add_argument("--hardware", default=f"{cpu_model()}, {os.cpu_count()} cores shared, no GPU",
                   help="the machine the run trained on, for the card")
    args = p.parse_args()
    figures = bundle(Path(args.run), Path(args.out), args.hardware)
    json.dump({k: v for k, v in figures.items() if k != "train_config"}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
