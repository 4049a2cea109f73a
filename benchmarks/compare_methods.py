"""ALAE, IntroVAE and LIA compared on the same data with the same budget: the sample faces at 64x64 (StyleALAE
blocks, `alae-rt train --method`) and scikit-learn's digits (the MLP variants, `alae-rt digits --method`).

Each method sees the same number of images (the same batches, learning rates and growing schedule; LIA spends the
last quarter of its steps on its encoder stage); its training time is recorded. Each is scored on data it never
saw: the held-out faces (the last --holdout of the folder, as `alae-rt train --holdout`) by reconstruction PSNR and
SSIM through the Runtime (EMA weights, constant noise), beside the mean face and PCA; the held-out digits by the
accuracy of a 1-NN and a linear SVM fitted on the training digits' latents (the ALAE paper's MNIST protocol) and by
reconstruction PSNR; encode and decode are timed per image. Writes compare_methods_<machine>_<date>_<commit>
.json, .md and .png (held-out faces and each method's reconstructions side by side) under --results.

    .venv/bin/python benchmarks/compare_methods.py --faces ../shared/data/faces128 --holdout 11 --threads 1 \\
        --runs out/compare --results benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from alae_rt.bench import cpu_model, machine_info, unused_stem
from alae_rt.checkpoint import load_checkpoint
from alae_rt.config import ModelConfig
from alae_rt.evaluation import baselines, load_split, model_reconstructions, psnr_db, ssim
from alae_rt.images import make_grid, save_image
from alae_rt.methods import METHODS, MethodConfig
from alae_rt.runtime import Runtime
from alae_rt.training.config import TrainConfig
from alae_rt.training.data import load_image_folder, split_holdout
from alae_rt.training.mlp import LOSS_COLUMNS, MLPConfig, evaluate, load_digits_split, train_mlp
from alae_rt.training.trainer import CHECKPOINT_FILE, METHOD_LABELS, RunInfo, Trainer

TIMING_REPEATS = 5  # encode / decode timings: the median of this many runs over the whole held-out batch


def median_ms_per_item(fn, n: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(TIMING_REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / n * 1000.0


def train_faces(method: str, args: argparse.Namespace, say) -> Path:
    """One `alae-rt train --method` run (in-process, same settings for every method); returns its folder."""
    mcfg = ModelConfig.preset(args.preset)
    steps = args.images // args.batch
    tcfg = TrainConfig.preset(args.preset).replace(
        lod_batch=(args.batch,), lod_images=args.lod_images, lod_lr=(args.lr,), ema_half_life_images=args.ema_half_life,
        lia_gan_steps=steps * 3 // 4 if method == "lia" else 0, seed=args.seed)
    images = load_image_folder(args.faces, mcfg.resolution, mcfg.channels)
    train_set, held = split_holdout(images, args.holdout)
    out = Path(args.runs) / method
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["benchmarks/compare_methods.py", *sys.argv[1:]])
    trainer = Trainer(mcfg, tcfg, train_set, held, out, RunInfo(str(args.faces), command, args.holdout),
                      say=say, method=MethodConfig.of(method, mcfg))
    trainer.train(steps, every=steps, progress=False)
    return out


def score_faces(method: str, run: Path, split) -> tuple[dict, np.ndarray]:
    rt = Runtime.load(run / CHECKPOINT_FILE, method=method)
    prov = load_checkpoint(run / CHECKPOINT_FILE).metadata
    rec = model_reconstructions(rt, split.held)
    train_rec = model_reconstructions(rt, split.train)
    held = rt.prepare_images(split.held)
    n = held.shape[0]
    w = rt.encode(held)
    row = {
        "method": method,
        "label": METHOD_LABELS[method],
        "description": prov["description"],
        "images_seen": prov["images_seen"],
        "steps": prov["steps"],
        "trained_resolution": prov["trained_resolution"],
        "train_wall_s": prov["wall_time_s"],
        "parameters_served": sum(v.numel() for k, v in rt.model.state_dict().items()
                                 if k.startswith(("mapping.", "generator.", "encoder."))),
        "heldout_psnr_db": psnr_db(split.held, rec),
        "heldout_ssim": ssim(split.held, rec),
        "train_psnr_db": psnr_db(split.train, train_rec),
        "encode_ms_per_image": median_ms_per_item(lambda: rt.encode(held), n),
        "decode_ms_per_image": median_ms_per_item(lambda: rt.decode(w, noise="const"), n),
    }
    return row, rec


def digits(method: str, args: argparse.Namespace) -> dict:
    cfg = MLPConfig(steps=args.digits_steps, method=method, seed=args.seed)
    x_tr, y_tr, x_te, y_te = load_digits_split(cfg)
    t0 = time.perf_counter()
    model, history = train_mlp(x_tr, cfg)
    wall = time.perf_counter() - t0
    acc = evaluate(model, x_tr, y_tr, x_te, y_te)
    with torch.no_grad():
        z = model.encode(x_te)
        rec = model.generator(z).clamp(-1, 1)
        mse = ((rec - x_te) / 2).pow(2).mean(dim=1)  # per digit, pixels in [0, 1]
        enc_ms = median_ms_per_item(lambda: model.encode(x_te), len(x_te))
        dec_ms = median_ms_per_item(lambda: model.generator(z), len(x_te))
    last = np.mean(np.asarray(history)[-100:, 1:], axis=0)
    return {"method": method, "label": METHOD_LABELS[method], "steps": cfg.steps, "images_seen": cfg.steps * cfg.batch,
            "train_wall_s": round(wall, 1), "accuracy": acc,
            "heldout_psnr_db": float(np.mean(10 * np.log10(1.0 / mse.clamp_min(1e-10).numpy()))),
            "encode_us_per_digit": enc_ms * 1000, "decode_us_per_digit": dec_ms * 1000,
            "final_losses": dict(zip(LOSS_COLUMNS[method], last.tolist()))}


def markdown(record: dict) -> str:
    info, f = record["machine"], record["faces"]
    lines = [
        "# ALAE, IntroVAE and LIA on the same data and budget",
        "",
        f"Machine: {info['cpu']}, {record['threads']} thread(s), shared with other jobs (timings are indicative); "
        f"{info['date']}; commit {info['commit']}. Command: `{record['command']}`.",
        "",
        f"## Faces: {f['folder']} at {f['resolution']}x{f['resolution']} ({f['preset']}, D={f['latent_size']})",
        "",
        f"{f['train_images']} training faces, {f['heldout_images']} held out ({', '.join(f['heldout_files'])}). "
        f"Every method saw {f['images_per_method']} images in batches of {f['batch']} (LOD every {f['lod_images']} "
        f"images, 4x4 up to {f['resolution']}x{f['resolution']}; LIA: the last quarter of the steps train its "
        "encoder with G frozen). Reconstruction through the Runtime (EMA weights, fp32, constant noise); PSNR is the "
        "mean of the per-face PSNRs. Encode / decode: the median over 5 runs of the held-out batch, per image, "
        "eager backend.",
        "",
        "| method | held-out PSNR (dB) | held-out SSIM | training-face PSNR (dB) | encode (ms/img) | decode (ms/img) "
        "| training time (min) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in f["methods"]:
        lines.append(f"| {r['label']} | {r['heldout_psnr_db']:.2f} | {r['heldout_ssim']:.3f} | "
                     f"{r['train_psnr_db']:.2f} | {r['encode_ms_per_image']:.2f} | {r['decode_ms_per_image']:.2f} | "
                     f"{r['train_wall_s'] / 60:.1f} |")
    for b in f["baselines"]:
        lines.append(f"| {b['name']} | {b['psnr_db']:.2f} | {b['ssim']:.3f} | | | | |")
    order = ", ".join(r["label"] for r in f["methods"])
    lines += ["", f"Grid ({record['grid']}): the held-out faces (top row), then the {order} reconstructions.",
              "", "## Digits: the MLP variants on scikit-learn digits", ""]
    d = record["digits"]
    lines += [f"{d['train_images']} training / {d['test_images']} test digits (stratified), latent of "
              f"{d['latent_size']} numbers, {d['steps']} steps of {d['batch']} digits per method. Accuracy of "
              "classifiers fitted on the training digits' latents, on the test digits' latents (the ALAE paper's "
              "MNIST protocol).", "",
              "| method | 1-NN | linear SVM | held-out PSNR (dB) | encode (us/digit) | decode (us/digit) "
              "| training time (s) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in d["methods"]:
        a = r["accuracy"]
        lines.append(f"| {r['label']} | {a['w_1nn']:.2%} | {a['w_linear_svm']:.2%} | {r['heldout_psnr_db']:.2f} | "
                     f"{r['encode_us_per_digit']:.1f} | {r['decode_us_per_digit']:.1f} | {r['train_wall_s']:.0f} |")
    a = d["methods"][0]["accuracy"]
    lines.append(f"| pixels (64, no model) | {a['pixels_1nn']:.2%} | {a['pixels_linear_svm']:.2%} | | | | |")
    lines += ["", "## What this budget can and cannot show", "", *[f"- {s}" for s in record["caveats"]]]
    return "\n".join(lines) + "\n"


CAVEATS = [
    "Each face model trained for minutes on one CPU thread, on under a hundred faces, for about ten thousand images "
    "seen; the papers train for millions of images on tens of thousands. The numbers rank the methods at this "
    "budget on this data, not at convergence: a method that learns slower but ends better (the GAN-based ones "
    "against the VAE) looks worse here.",
    "One seed per method, eleven held-out faces: differences of a few tenths of a dB are within the noise of the "
    "run; treat only large gaps as real.",
    "The hyper-parameters are the defaults of `alae-rt train --method` (IntroVAE's alpha, beta and margin, LIA's "
    "stage split and loss weights), untuned for this data; each method's paper tuned its own on its own data.",
    "Reconstruction PSNR/SSIM favour methods trained on pixel losses (IntroVAE, LIA's encoder stage) over ALAE, "
    "whose paper trains no pixel loss; they say nothing of sample quality or of how editable the latent space is.",
    "Encode and decode times are the same network blocks for all three (IntroVAE's encoder has 2D-wide style "
    "terms, LIA adds nothing to encode or decode), so differences there are mostly noise of a shared machine.",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", default="../shared/data/faces128", help="face folder (default %(default)s)")
    p.add_argument("--holdout", type=int, default=11, help="held-out faces: the last N (default %(default)s)")
    p.add_argument("--preset", default="small-64", help="model preset (default %(default)s)")
    p.add_argument("--images", type=int, default=9600, help="images each face model sees (default %(default)s)")
    p.add_argument("--batch", type=int, default=16, help="batch at every LOD (default %(default)s)")
    p.add_argument("--lod-images", type=int, default=1200, help="images per LOD (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.002, help="learning rate (default %(default)s)")
    p.add_argument("--ema-half-life", type=float, default=1000.0, help="EMA half-life in images (default %(default)s)")
    p.add_argument("--digits-steps", type=int, default=3000, help="MLP steps per method (default %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="out/compare_methods", help="folder for the training runs (default %(default)s)")
    p.add_argument("--results", default="benchmarks/results", help="folder for the results (default %(default)s)")
    p.add_argument("--tag", default="", help="added to the result file names")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    mcfg = ModelConfig.preset(args.preset)
    split = load_split(args.faces, mcfg.resolution, mcfg.channels, args.holdout)
    face_rows, recs = [], {}
    for m in methods:
        say(f"faces: training {m} ...")
        run = train_faces(m, args, say)
        row, recs[m] = score_faces(m, run, split)
        face_rows.append(row)
        say(f"faces: {m}: held-out PSNR {row['heldout_psnr_db']:.2f} dB, SSIM {row['heldout_ssim']:.3f}, "
            f"{row['train_wall_s'] / 60:.1f} min")
    digit_rows = []
    for m in methods:
        say(f"digits: training {m} ...")
        digit_rows.append(digits(m, args))
        a = digit_rows[-1]["accuracy"]
        say(f"digits: {m}: 1-NN {a['w_1nn']:.2%}, linear SVM {a['w_linear_svm']:.2%}")

    info = machine_info(torch.device("cpu"))
    machine = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")[:40]
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = unused_stem(out, f"compare_methods_{machine}_{info['date'][:10].replace('-', '')}_{info['commit']}"
                            f"{args.tag}")
    grid = [list(split.held)] + [list(recs[m]) for m in methods]
    save_image(make_grid(grid), out / f"{stem}.png")
    dcfg = MLPConfig(steps=args.digits_steps)
    x_tr, _, x_te, _ = load_digits_split(dcfg)
    record = {
        "benchmark": "compare_methods",
        "command": " ".join(["benchmarks/compare_methods.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": info,
        "threads": args.threads,
        "grid": f"{stem}.png",
        "faces": {
            "folder": Path(args.faces).name, "preset": args.preset, "resolution": mcfg.resolution,
            "latent_size": mcfg.latent_size, "train_images": len(split.train), "heldout_images": len(split.held),
            "heldout_files": split.held_names, "images_per_method": args.images // args.batch * args.batch,
            "batch": args.batch, "lod_images": args.lod_images, "lr": args.lr, "ema_half_life": args.ema_half_life,
            "methods": face_rows,
            "baselines": [vars(b) for b in baselines(split, [mcfg.latent_size])],
        },
        "digits": {"train_images": len(x_tr), "test_images": len(x_te), "latent_size": dcfg.latent_size,
                   "steps": args.digits_steps, "batch": dcfg.batch, "methods": digit_rows},
        "caveats": CAVEATS,
    }
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(record))
    say(f"wrote {out / stem}.json, .md and .png")
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
