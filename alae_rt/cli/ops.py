"""The local model operations: `alae-rt encode | decode | reconstruct | generate | mix | edit`.

Each is one Runtime call per step; the Runtime chunks by --batch-size and reports each chunk to the progress bar.
Latents stay on the Runtime's device between steps and come to the host only to be saved.
"""

from __future__ import annotations

import argparse

import numpy as np

from alae_rt.cli import grids
from alae_rt.cli.options import (
    add_command,
    add_edit_args,
    add_generate_args,
    add_images_arg,
    add_mix_args,
    add_noise_args,
    add_out_arg,
    host,
    make_runtime,
    out_dir,
    out_file,
    parse_direction,
    parse_int_list,
    parse_layers,
    progress_bar,
    save_images,
)
from alae_rt.cli.sources import Sources, load_latents, read_sources


def add_parsers(sub) -> None:
    p = add_command(sub, "encode", "encode images into W: writes w [N, D] as .npy, rows in input order", cmd_encode)
    add_images_arg(p)
    add_out_arg(p, "output .npy file")

    p = add_command(sub, "decode", "decode latents (.npy of [N, D] or [N, 2L, D]) into PNG images", cmd_decode)
    p.add_argument("latents", help=".npy file")
    add_out_arg(p, "output directory")
    add_noise_args(p)

    p = add_command(sub, "reconstruct", "encode and decode images: PNGs and a side-by-side grid", cmd_reconstruct)
    add_images_arg(p)
    add_out_arg(p, "output directory")
    add_noise_args(p)

    p = add_command(sub, "generate", "generate images from seeds (z -> F -> truncation -> G)", cmd_generate)
    add_generate_args(p)

    p = add_command(sub, "mix", "style mixing: coarse styles from A, the rest from B; writes a grid", cmd_mix)
    add_mix_args(p)

    p = add_command(sub, "edit", "move images or latents along W-space directions and decode them", cmd_edit)
    add_edit_args(p, "a direction and its strength; NAME is a .npy file or a name from --directions-dir "
                     "(e.g. smile=3); repeat for several", directions_dir=True)


# ---- steps -------------------------------------------------------------------------------------------------


def _encode(rt, args: argparse.Namespace, paths: list, desc: str):
    """Image files -> w [N, D] on the device (the Runtime reads them a chunk at a time)."""
    with progress_bar(args, len(paths), desc) as bar:
        return rt.encode(paths, progress=bar.update)


def _originals(rt, paths: list) -> np.ndarray:
    """The inputs as the model sees them (centre crop, R x R), uint8 [N, R, R, C] for the grids, one file at a time."""
    return np.concatenate([rt.to_uint8(rt.prepare_images([p])) for p in paths])


def _decode(rt, args: argparse.Namespace, w, desc: str, **noise) -> np.ndarray:
    """Latents -> uint8 [N, R, R, C]."""
    with progress_bar(args, len(w), desc) as bar:
        return rt.decode_uint8(w, progress=bar.update, **noise).cpu().numpy()


def _latents(rt, args: argparse.Namespace, src: Sources, what: str):
    """A command's sources -> (latents on the device or as read, the inputs as the model sees them or None)."""
    if src.latents is not None:
        return src.latents, None
    if src.seeds is not None:
        return rt.seed_styles(src.seeds, truncation_psi=args.psi), None
    return _encode(rt, args, src.paths, f"encode {what}"), _originals(rt, src.paths)


def _sources(rt, items: list[str]) -> Sources:
    return read_sources(items, rt.config.latent_size, rt.config.num_styles)


# ---- commands ----------------------------------------------------------------------------------------------


def cmd_encode(args: argparse.Namespace) -> int:
    from alae_rt.images import list_images

    out = out_file(args.out, ".npy")
    paths = list_images(args.images)
    rt = make_runtime(args)
    w = _encode(rt, args, paths, "encode")
    np.save(out, host(w))
    print(f"wrote {out}: w {list(w.shape)} for {len(paths)} image(s), in input order")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    out = out_dir(args.out)
    rt = make_runtime(args)
    w = load_latents(args.latents, rt.config.latent_size, rt.config.num_styles)
    images = _decode(rt, args, w, "decode", noise=args.noise, seed=args.seed)
    save_images(images, [f"{i:06d}" for i in range(len(images))], out)
    print(f"wrote {len(images)} image(s) to {out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from alae_rt.images import list_images

    out = out_dir(args.out)
    paths = list_images(args.images)
    rt = make_runtime(args)
    w = _encode(rt, args, paths, "encode")
    recs = _decode(rt, args, w, "decode", noise=args.noise, seed=args.seed)
    save_images(recs, [f"{i:04d}_{p.stem}" for i, p in enumerate(paths)], out)
    grids.save_grid(grids.reconstruct_rows(_originals(rt, paths), recs), out / "grid.png", args)
    print(f"wrote {len(recs)} reconstruction(s) and grid.png (original | reconstruction) to {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    out = out_dir(args.out)
    seeds = parse_int_list(args.seeds)
    rt = make_runtime(args)
    # Styles and noise as Runtime.generate makes them, kept to save the styles.
    styles = rt.seed_styles(seeds, truncation_psi=args.psi, truncation_cutoff=args.cutoff)  # [N, 2L, D]
    noise = rt.generation_noise(len(seeds), args.noise, seed=args.seed, seeds=seeds)
    images = _decode(rt, args, styles, "generate", noise=noise)
    save_images(images, [f"seed{s:04d}" for s in seeds], out)
    np.save(out / "styles.npy", host(styles))
    grids.save_grid(grids.generate_rows(images), out / "grid.png", args)
    print(f"wrote {len(images)} image(s), styles.npy [N, 2L, D] and grid.png to {out}")
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    out = out_dir(args.out)
    rt = make_runtime(args)
    src_a, src_b = _sources(rt, args.a), _sources(rt, args.b)
    w_a, _ = _latents(rt, args, src_a, "a")
    w_b, _ = _latents(rt, args, src_b, "b")
    noise = {"noise": args.noise, "seed": args.seed}
    images_a = _decode(rt, args, w_a, "decode a", **noise)
    images_b = _decode(rt, args, w_b, "decode b", **noise)
    mixed = []
    with progress_bar(args, len(w_a) * len(w_b), "mix") as bar:
        for i, name_a in enumerate(src_a.names):  # one row of the grid: a_i against every b
            row = rt.decode_uint8(rt.mix_styles(w_a[i:i + 1], w_b, args.cutoff), progress=bar.update, **noise)
            row = row.cpu().numpy()
            save_images(row, [f"mix_{name_a}__{name_b}" for name_b in src_b.names], out)
            mixed.append(row)
    grids.save_grid(grids.mix_rows(images_a, images_b, mixed), out / "grid.png", args)
    print(f"wrote {len(w_a) * len(w_b)} mix(es) and grid.png (rows: a = styles < {args.cutoff}; columns: b) to {out}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    out = out_dir(args.out)
    edits = dict(parse_direction(d) for d in args.direction)
    rt = make_runtime(args)
    if args.directions_dir:
        rt.load_directions(args.directions_dir)
    layers = parse_layers(args)
    src = _sources(rt, args.inputs)
    w, originals = _latents(rt, args, src, "inputs")
    edited = rt.edit(w, edits, mode=args.mode, layers=layers)
    noise = {"noise": args.noise, "seed": args.seed}
    decoded = _decode(rt, args, w, "reconstruct", **noise)
    edited_images = _decode(rt, args, edited, "edit", **noise)
    save_images(edited_images, src.names, out)
    np.save(out / "edited.npy", host(edited))
    rows, columns = grids.edit_rows(originals, decoded, edited_images)
    grids.save_grid(rows, out / "grid.png", args)
    print(f"wrote {len(edited_images)} edited image(s), edited.npy and grid.png ({columns}) to {out}")
    return 0
