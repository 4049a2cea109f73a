"""The local model operations: `alae-rt encode | decode | reconstruct | generate | mix | edit`.

Each is one Runtime call per step; the Runtime chunks by --batch-size and reports each chunk to the progress bar.
Latents stay on the Runtime's device between steps and come to the host only to be saved.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from alae_rt.cli import grids
from alae_rt.cli.options import (
    add_command,
    add_edit_args,
    add_generate_args,
    add_images_arg,
    add_interpolate_args,
    add_mix_args,
    add_noise_args,
    add_out_arg,
    check_input_options,
    host,
    make_runtime,
    out_dir,
    out_file,
    parse_directions,
    parse_layers,
    parse_seeds,
    progress_bar,
    save_images,
    say,
)
from alae_rt.cli.sources import Sources, check_latent_array, read_latents, read_npy, read_sources
from alae_rt.errors import InputError


def add_parsers(sub) -> None:
    p = add_command(sub, "encode", "encode images into W: writes w [N, D] as .npy, rows in input order", cmd_encode)
    add_images_arg(p)
    add_out_arg(p, "output .npy file")

    p = add_command(sub, "decode", "decode latents (.npy of [N, D] or [N, 2L, D]; one w [D] is taken as [1, D]) "
                    "into PNG images", cmd_decode)
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

    p = add_command(sub, "interpolate", "frames from A to B, linear in W: PNGs, latents.npy, grid.png",
                    cmd_interpolate)
    add_interpolate_args(p)

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


def _checked(rt, src: Sources) -> Sources:
    return src.checked(rt.config.latent_size, rt.config.num_styles)


def _direction_files(edits: list[tuple[str, float]]) -> None:
    """Direction .npy files exist and hold numbers, before the model loads (their shape is checked by the Runtime)."""
    for name, _ in edits:
        if name.endswith(".npy"):
            read_npy(name, "direction")


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
    raw = read_latents(args.latents)  # before the model loads: a missing file is reported at once
    out = out_dir(args.out)
    rt = make_runtime(args)
    if raw.ndim == 1:
        say(args, f"{args.latents}: one w [{raw.shape[0]}], decoded as [1, {raw.shape[0]}]")
    w = check_latent_array(raw, rt.config.latent_size, rt.config.num_styles, args.latents)
    images = _decode(rt, args, w, "decode", noise=args.noise, seed=args.seed)
    save_images(images, [f"{i:06d}" for i in range(len(images))], out)
    print(f"wrote {len(images)} image(s) to {out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from alae_rt.images import list_images

    paths = list_images(args.images)
    out = out_dir(args.out)
    rt = make_runtime(args)
    w = _encode(rt, args, paths, "encode")
    recs = _decode(rt, args, w, "decode", noise=args.noise, seed=args.seed)
    save_images(recs, [f"{i:04d}_{p.stem}" for i, p in enumerate(paths)], out)
    grids.save_grid(grids.reconstruct_grid(_originals(rt, paths), recs, rt.source), out / "grid.png", args)
    print(f"wrote {len(recs)} reconstruction(s) and grid.png (original | reconstruction) to {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds, "--seeds")
    check_input_options(args)
    out = out_dir(args.out)
    rt = make_runtime(args)
    # Styles and noise as Runtime.generate makes them, kept to save the styles.
    styles = rt.seed_styles(seeds, truncation_psi=args.psi, truncation_cutoff=args.cutoff)  # [N, 2L, D]
    noise = rt.generation_noise(len(seeds), args.noise, seed=args.seed, seeds=seeds)
    images = _decode(rt, args, styles, "generate", noise=noise)
    names = [f"seed{s:04d}" for s in seeds]
    save_images(images, names, out)
    np.save(out / "styles.npy", host(styles))
    psi = rt.config.truncation_psi if args.psi is None else args.psi
    cutoff = rt.config.truncation_cutoff if args.cutoff is None else args.cutoff
    caption = [generate_caption(len(seeds), psi, cutoff, args.noise, args.seed), f"weights: {rt.source}"]
    grids.save_grid(grids.generate_grid(images, [f"seed {s}" for s in seeds], caption), out / "grid.png", args)
    print(f"wrote {len(images)} image(s), styles.npy [N, 2L, D] and grid.png to {out}")
    return 0


def generate_caption(n: int, psi: float, cutoff: int, noise: str, seed: int | None) -> str:
    seeded = "per-seed" if noise == "random" and seed is None else f"seed {seed}" if seed is not None else ""
    return f"{n} generated image(s): truncation psi {psi:g} on style inputs < {cutoff}; noise {noise}" + (
        f" ({seeded})" if seeded else "")


def cmd_mix(args: argparse.Namespace) -> int:
    check_input_options(args)
    src_a, src_b = read_sources(args.a), read_sources(args.b)
    out = out_dir(args.out)
    rt = make_runtime(args)
    src_a, src_b = _checked(rt, src_a), _checked(rt, src_b)
    w_a, photos_a = _latents(rt, args, src_a, "a")
    w_b, photos_b = _latents(rt, args, src_b, "b")
    noise = {"noise": args.noise, "seed": args.seed}
    # The inputs as the grid shows them: photos as the model sees them, latents and seeds decoded.
    images_a = photos_a if photos_a is not None else _decode(rt, args, w_a, "decode a", **noise)
    images_b = photos_b if photos_b is not None else _decode(rt, args, w_b, "decode b", **noise)
    mixed = []
    with progress_bar(args, len(w_a) * len(w_b), "mix") as bar:
        for i, name_a in enumerate(src_a.names):  # one row of the grid: a_i against every b
            row = rt.decode_uint8(rt.mix_styles(w_a[i:i + 1], w_b, args.cutoff), progress=bar.update, **noise)
            row = row.cpu().numpy()
            save_images(row, [f"mix_{name_a}__{name_b}" for name_b in src_b.names], out)
            mixed.append(row)
    grid = grids.mix_grid(images_a, images_b, mixed, src_a.names, src_b.names, args.cutoff, rt.source)
    grids.save_grid(grid, out / "grid.png", args)
    print(f"wrote {len(w_a) * len(w_b)} mix(es) and grid.png (rows: a = styles < {args.cutoff}; columns: b) to {out}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    check_input_options(args)
    edits = parse_directions(args.direction)
    _direction_files(edits)
    layers = parse_layers(args)
    if args.directions_dir is not None and not os.path.isdir(args.directions_dir):
        raise InputError(f"{args.directions_dir}: no such directions folder")
    src = read_sources(args.inputs)
    out = out_dir(args.out)
    rt = make_runtime(args)
    if args.directions_dir:
        rt.load_directions(args.directions_dir)
    src = _checked(rt, src)
    w, originals = _latents(rt, args, src, "inputs")
    edited = rt.edit(w, edits, mode=args.mode, layers=layers)
    noise = {"noise": args.noise, "seed": args.seed}
    decoded = _decode(rt, args, w, "reconstruct" if originals is not None else "decode", **noise)
    edited_images = _decode(rt, args, edited, "edit", **noise)
    save_images(edited_images, src.names, out)
    np.save(out / "edited.npy", host(edited))
    grid, columns = grids.edit_grid(originals, decoded, edited_images, grids.edit_label(edits, args.mode), rt.source,
                                    edit_note(edits, args.mode, args.layers))
    grids.save_grid(grid, out / "grid.png", args)
    print(f"wrote {len(edited_images)} edited image(s), edited.npy and grid.png ({columns}) to {out}")
    return 0


def edit_note(edits: list[tuple[str, float]], mode: str, layers: str | None) -> str:
    """The edit in words for the grid's caption: 'w + 3 x smile + 1 x out/dir.npy (style inputs 0-3)'."""
    if mode == "set":
        text = "; ".join(f"the coordinate along {n} set to {s:g}" for n, s in edits)
    else:
        text = "w " + " ".join(f"{'-' if s < 0 else '+'} {abs(s):g} x {n}" for n, s in edits)
    return text + (f" (style inputs {layers})" if layers else "")


def interpolate_names(names_a: list[str], names_b: list[str]) -> list[str]:
    """The (a, b) pairs of an interpolation as output names 'A__B': the same number of each, or one of either."""
    if len(names_a) != len(names_b) and 1 not in (len(names_a), len(names_b)):
        raise InputError(f"--b: {len(names_b)} input(s) against {len(names_a)} in --a; give as many, or one of either")
    n = max(len(names_a), len(names_b))
    return [f"{names_a[0 if len(names_a) == 1 else i]}__{names_b[0 if len(names_b) == 1 else i]}" for i in range(n)]


def cmd_interpolate(args: argparse.Namespace) -> int:
    check_input_options(args)
    src_a, src_b = read_sources(args.a), read_sources(args.b)
    pairs = interpolate_names(src_a.names, src_b.names)
    out = out_dir(args.out)
    rt = make_runtime(args)
    src_a, src_b = _checked(rt, src_a), _checked(rt, src_b)
    w_a, _ = _latents(rt, args, src_a, "a")
    w_b, _ = _latents(rt, args, src_b, "b")
    path = rt.interpolate(w_a, w_b, args.steps)  # [steps, n, D] or [steps, n, 2L, D]
    maps = rt.noise(len(pairs), args.noise, args.seed)  # the same maps for every frame, as the server's
    frames: list[list[np.ndarray]] = [[] for _ in pairs]
    with progress_bar(args, len(pairs) * args.steps, "interpolate") as bar:
        for index, w in enumerate(path):
            images = rt.decode_uint8(w, noise=maps, progress=bar.update).cpu().numpy()
            save_images(images, [f"{name}_t{index:03d}" for name in pairs], out)
            for k, img in enumerate(images):
                frames[k].append(img)
    np.save(out / "latents.npy", host(path))
    ts = [i / (args.steps - 1) for i in range(args.steps)]
    grids.save_grid(grids.interpolate_grid(frames, pairs, ts, rt.source), out / "grid.png", args)
    print(f"wrote {len(pairs) * args.steps} frame(s) of {len(pairs)} interpolation(s), latents.npy [steps, N, ...] "
          f"and grid.png to {out}")
    return 0
