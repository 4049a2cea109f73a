"""`alae-rt eval`: held-out reconstruction PSNR and SSIM of a checkpoint beside the mean-face and PCA baselines."""

from __future__ import annotations

import argparse
import json

from alae_rt.cli.grids import Grid, save_grid
from alae_rt.cli.options import add_command, add_out_arg, make_runtime, out_dir, parse_int_list, say


def add_parsers(sub) -> None:
    p = add_command(sub, "eval", "held-out reconstruction PSNR / SSIM of a checkpoint, beside PCA baselines",
                    cmd_eval)
    p.description = (
        "Reconstruct the held-out faces of a folder (the trainer's split: the last N images in path order) and "
        "report PSNR and SSIM beside what a linear code does on the same faces: the mean training face, and PCA "
        "of the training faces with 8 and with as many components as the model's w (also fitted on the faces "
        "plus their mirror images). The model reconstructs through the Runtime with constant noise.")
    p.add_argument("--faces", required=True, metavar="DIR", help="folder of aligned faces (the training folder)")
    p.add_argument("--holdout", type=int, metavar="N",
                   help="the last N images are the held-out ones (default: as alae-rt train, 10%% up to 16)")
    p.add_argument("--pca", metavar="K,K,..", help="PCA sizes to compare with (default: 8 and the latent size)")
    p.add_argument("--name", default="model", help="the model's name in the table (default: model)")
    add_out_arg(p, "also write eval.json, eval.md and a labelled reconstructions.png here", required=False)


def cmd_eval(args: argparse.Namespace) -> int:
    from alae_rt.evaluation import evaluate, pca_reconstruct, split_files, table

    split_files(args.faces, args.holdout)  # before the model loads: an empty folder is reported at once
    pca = parse_int_list(args.pca, "--pca") if args.pca else None
    out = out_dir(args.out) if args.out else None
    rt = make_runtime(args, announce=False)
    result = evaluate(rt, args.faces, args.holdout, pca, name=args.name)
    split, rec = result.pop("_split"), result.pop("_reconstructions")
    text = table(result)
    print(f"{result['heldout_images']} held-out faces of {result['folder']} at {result['resolution']}x"
          f"{result['resolution']} ({result['train_images']} training faces for the baselines)\n")
    print(text)
    if out is not None:
        (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "eval.md").write_text(text + "\n")
        d = rt.config.latent_size
        linear = pca_reconstruct(split.train, split.held, min(d, len(split.train) - 1))
        rows = [[o, m, p] for o, m, p in zip(split.held, rec, linear)]
        grid = Grid(rows, header=["held-out face", f"{args.name} (w, {d} numbers)", f"PCA, {d} components"],
                    labels=[[n, "", ""] for n in result["heldout_files"]],
                    caption=[f"model {result['model']['psnr_db']:.2f} dB, PCA-{d} "
                             f"{next(b['psnr_db'] for b in result['baselines'] if b['numbers'] == d):.2f} dB "
                             "(mean PSNR over the held-out faces)"])
        save_grid(grid, out / "reconstructions.png", args)
        say(args, f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    return 0
