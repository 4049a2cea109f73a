"""`alae-rt demo`: reconstruct and edit sample faces into one image grid (alae_rt.demo does the work)."""

from __future__ import annotations

import argparse

from alae_rt.cli.options import add_command, add_out_arg, make_runtime, out_dir, progress_bar


def add_parsers(sub) -> None:
    p = add_command(sub, "demo", "reconstruct and edit sample faces into one image grid", cmd_demo)
    p.add_argument("--faces", required=True, help="folder of face images")
    p.add_argument("--count", type=int, default=8, help="faces to show (default 8)")
    p.add_argument("--strength", type=float, default=None,
                   help="edit strength (default: 3 for the official directions, 2 std of the data for PCA)")
    p.add_argument("--directions-dir", metavar="DIR",
                   help="official FFHQ principal directions; used when the model's latent size matches")
    add_out_arg(p, "output directory (default out/demo)", required=False, default="out/demo")


def cmd_demo(args: argparse.Namespace) -> int:
    from alae_rt.demo import run_demo

    out = out_dir(args.out)
    rt = make_runtime(args, announce=False)  # the demo states the weights on stdout itself
    run_demo(rt, args.faces, out, count=args.count, strength=args.strength, directions_dir=args.directions_dir,
             progress=lambda total, desc: progress_bar(args, total, desc), say=lambda m: print(m))
    return 0
