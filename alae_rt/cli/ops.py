"""The local model operations: `alae-rt encode | decode | reconstruct | generate | mix | edit`.

Each works --batch-size rows at a time, one Runtime call a chunk, and writes a chunk's files before the next is
computed (alae_rt.cli.outputs: sortable names, "wrote K of N" when a run stops part-way). Latents stay on the
Runtime's device between steps and come to the host only to be saved.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

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
    say,
)
from alae_rt.cli.outputs import NpyRows, Written, image_names, latent_names, reporting, save_images, seed_names
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
# Every command works --batch-size rows at a time and writes each chunk's files before the next: memory holds one
# chunk and the first images the grid shows (grids.grid_capacity), and a run stopped part-way keeps its files.


def _slices(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _noise_of_rows(rt, n: int, noise: str, seed: int | None, seeds: list[int] | None = None):
    """The noise of rows [sl] of a run of n, as one Runtime call over all n rows draws it: const and none maps are
    shared, random noise with --seed is drawn once for the n rows (row k must not depend on --batch-size), and
    per-seed (generate's) and unseeded random noise are drawn a chunk at a time."""
    if noise == "random" and seed is None:  # fresh or per-seed maps: a chunk's are those of all n at once
        return lambda sl: rt.generation_noise(sl.stop - sl.start, noise, None, None if seeds is None else seeds[sl])
    maps = rt.noise(n, noise, seed)
    return lambda sl: [m if m is None or m.shape[0] == 1 else m[sl] for m in maps]


def _decode_and_save(rt, args: argparse.Namespace, latents_of, names: list[str], out, written: Written, desc: str,
                     noise_of, keep: int, before_save=None) -> list[np.ndarray]:
    """Rows [sl] of latents (`latents_of(sl)`) decoded a chunk at a time, each chunk's images saved as NAME.png before
    the next is decoded -> the first `keep` images (for the grid). `before_save(sl, latents)` saves what goes with a
    chunk's images (their styles) before them."""
    shown: list[np.ndarray] = []
    with progress_bar(args, len(names), desc) as bar:
        for sl in _slices(len(names), rt.max_batch):
            w = latents_of(sl)
            images = rt.decode_uint8(w, noise=noise_of(sl)).cpu().numpy()
            if before_save is not None:
                before_save(sl, w)
            save_images(images, names[sl], out, written)
            shown.extend(img.copy() for img in images[:max(0, keep - len(shown))])
            bar.update(len(images))
    return shown


def _encode(rt, args: argparse.Namespace, paths: list, desc: str, on_chunk=None):
    """Image files -> w [N, D] on the device, a chunk at a time (`on_chunk(sl, w)` hears of each)."""
    import torch

    parts = []
    with progress_bar(args, len(paths), desc) as bar:
        for sl in _slices(len(paths), rt.max_batch):
            parts.append(rt.encode(paths[sl]))
            if on_chunk is not None:
                on_chunk(sl, parts[-1])
            bar.update(sl.stop - sl.start)
    return torch.cat(parts)


def _originals(rt, paths: list) -> list[np.ndarray]:
    """The inputs as the model sees them (centre crop, R x R), uint8 [R, R, C] each, for the grids."""
    return [rt.to_uint8(rt.prepare_images([p]))[0] for p in paths]


def _latents(rt, args: argparse.Namespace, src: Sources, what: str):
    """A command's sources -> latents on the device or as read (images encoded, seeds mapped and truncated)."""
    if src.latents is not None:
        return src.latents
    if src.seeds is not None:
        return rt.seed_styles(src.seeds, truncation_psi=args.psi)
    return _encode(rt, args, src.paths, f"encode {what}")


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
    parts: list[np.ndarray] = []
    written = Written(len(paths), "latents (the first images' rows, in input order)", out)

    def keep(sl: slice, w) -> None:
        parts.append(host(w))
        written.add(sl.stop - sl.start)

    with reporting(args, written, lambda n: np.save(out, np.concatenate(parts)[:n])):
        w = _encode(rt, args, paths, "encode", on_chunk=keep)
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
    names = latent_names(args.latents, len(w))
    written = Written(len(w), "image(s)", out)
    with reporting(args, written):
        _decode_and_save(rt, args, lambda sl: w[sl], names, out, written, "decode",
                         _noise_of_rows(rt, len(w), args.noise, args.seed), keep=0)
    print(f"wrote {written.count} image(s) ({names[0]}.png ...) to {out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from alae_rt.images import list_images

    paths = list_images(args.images)
    out = out_dir(args.out)
    rt = make_runtime(args)
    shown = min(len(paths), grids.grid_capacity(rt.config.resolution))
    written = Written(len(paths), "reconstruction(s)", out)
    with reporting(args, written):
        # Encoded and decoded a chunk at a time: w [chunk, D] is all a chunk keeps.
        recs = _decode_and_save(rt, args, lambda sl: rt.encode(paths[sl]), image_names(paths), out, written,
                                "reconstruct", _noise_of_rows(rt, len(paths), args.noise, args.seed), keep=shown)
    grid = grids.reconstruct_grid(_originals(rt, paths[:shown]), recs, grids.file_names_only(rt.source),
                                  total=len(paths))
    grids.save_grid(grid, out / "grid.png", args)
    print(f"wrote {len(paths)} reconstruction(s) and grid.png (original | reconstruction) to {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds, "--seeds")
    check_input_options(args)
    out = out_dir(args.out)
    rt = make_runtime(args)
    psi, cutoff = rt.check_psi(args.psi), rt.check_cutoff(args.cutoff, "truncation_cutoff")
    shown = min(len(seeds), grids.grid_capacity(rt.config.resolution))
    written = Written(len(seeds), "image(s)", out)
    def styles_of(sl: slice):  # Runtime.generate's styles, kept to save them
        return rt.seed_styles(seeds[sl], truncation_psi=psi, truncation_cutoff=cutoff)

    def interrupted(n: int) -> None:
        styles.finish(n)
        say(args, f"wrote styles.npy of the {n} image(s) written")

    # styles.npy [N, 2L, D]: a chunk's rows go before its images
    with NpyRows(out / "styles.npy") as styles, reporting(args, written, interrupted):
        images = _decode_and_save(rt, args, styles_of, seed_names(seeds), out, written, "generate",
                                  _noise_of_rows(rt, len(seeds), args.noise, args.seed, seeds), keep=shown,
                                  before_save=lambda sl, w: styles.add(host(w)))
        styles.finish()
    caption = [generate_caption(len(seeds), psi, cutoff, rt.config.num_styles, args.noise, args.seed),
               f"weights: {grids.file_names_only(rt.source)}"]
    grid = grids.generate_grid(images, [f"seed {s}" for s in seeds[:shown]], caption, total=len(seeds))
    grids.save_grid(grid, out / "grid.png", args)
    print(f"wrote {len(seeds)} image(s), styles.npy [N, 2L, D] and grid.png to {out}")
    return 0


def generate_caption(n: int, psi: float, cutoff: int, num_styles: int, noise: str, seed: int | None) -> str:
    seeded = "per-seed" if noise == "random" and seed is None else f"seed {seed}" if seed is not None else ""
    return f"{n} generated image(s): truncation psi {psi:g} on {truncated_styles(cutoff, num_styles)}; noise " \
           f"{noise}" + (f" ({seeded})" if seeded else "")


def truncated_styles(cutoff: int, num_styles: int) -> str:
    """The style inputs a truncation cutoff pulls in, in words: a cutoff past the model's style inputs takes all."""
    if cutoff >= num_styles:
        return f"all {num_styles} style inputs" + (f" (cutoff {cutoff})" if cutoff > num_styles else "")
    return f"style inputs < {cutoff} (of {num_styles})"


def cmd_mix(args: argparse.Namespace) -> int:
    check_input_options(args)
    src_a, src_b = read_sources(args.a), read_sources(args.b)
    out = out_dir(args.out)
    rt = make_runtime(args)
    src_a, src_b = _checked(rt, src_a), _checked(rt, src_b)
    w_a, w_b = _latents(rt, args, src_a, "a"), _latents(rt, args, src_b, "b")
    n_a, n_b = len(src_a.names), len(src_b.names)
    rows, cols = grids.mix_shown(n_a, n_b, grids.grid_capacity(rt.config.resolution))

    # The inputs as the grid shows them: photos as the model sees them, latents and seeds decoded.
    def shown(src: Sources, w, k: int) -> list[np.ndarray]:
        if src.paths is not None:
            return _originals(rt, src.paths[:k])
        return list(rt.decode_uint8(w[:k], noise=args.noise, seed=args.seed).cpu().numpy())

    images_a, images_b = shown(src_a, w_a, rows), shown(src_b, w_b, cols)
    noise_of = _noise_of_rows(rt, n_b, args.noise, args.seed)  # every row (a_i against all b) gets the same maps
    written = Written(n_a * n_b, "mix(es)", out)
    mixed = []
    with progress_bar(args, n_a * n_b, "mix") as bar, reporting(args, written):
        for i, name_a in enumerate(src_a.names):  # one row of the grid: a_i against every b
            row: list[np.ndarray] = []
            for sl in _slices(n_b, rt.max_batch):
                images = rt.decode_uint8(rt.mix_styles(w_a[i:i + 1], w_b[sl], args.cutoff),
                                         noise=noise_of(sl)).cpu().numpy()
                save_images(images, [f"mix_{name_a}__{name_b}" for name_b in src_b.names[sl]], out, written)
                if i < rows:
                    row.extend(img.copy() for img in images[:max(0, cols - len(row))])
                bar.update(len(images))
            if i < rows:
                mixed.append(row)
    grid = grids.mix_grid(images_a, images_b, mixed, src_a.labels[:rows], src_b.labels[:cols], args.cutoff,
                          grids.file_names_only(rt.source), total=(n_a, n_b))
    grids.save_grid(grid, out / "grid.png", args)
    print(f"wrote {n_a * n_b} mix(es) and grid.png (rows: a = styles < {args.cutoff}; columns: b) to {out}")
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
    w = _latents(rt, args, src, "inputs")
    edited = rt.edit(w, edits, mode=args.mode, layers=layers)
    n = len(src.names)
    shown = min(n, grids.grid_capacity(rt.config.resolution))
    noise_of = _noise_of_rows(rt, n, args.noise, args.seed)
    written = Written(n, "edited image(s)", out)
    with reporting(args, written, lambda k: np.save(out / "edited.npy", host(edited[:k]))):
        edited_images = _decode_and_save(rt, args, lambda sl: edited[sl], src.names, out, written, "edit", noise_of,
                                         keep=shown)
    np.save(out / "edited.npy", host(edited))
    # The grid's first inputs as decoded (reconstructed, for images) beside their edits.
    decoded = list(rt.decode_uint8(w[:shown], noise=noise_of(slice(0, shown))).cpu().numpy())
    originals = _originals(rt, src.paths[:shown]) if src.paths is not None else None
    grid, columns = grids.edit_grid(originals, decoded, edited_images, grids.edit_label(edits, args.mode),
                                    grids.file_names_only(rt.source), edit_note(edits, args.mode, args.layers), total=n)
    grids.save_grid(grid, out / "grid.png", args)
    print(f"wrote {n} edited image(s), edited.npy and grid.png ({columns}) to {out}")
    return 0


def edit_note(edits: list[tuple[str, float]], mode: str, layers: str | None) -> str:
    """The edit in words for the grid's caption: 'w + 3 x smile + 1 x out/dir.npy (style inputs 0-3)'."""
    if mode == "set":
        text = "; ".join(f"the coordinate along {n} set to {s:g}" for n, s in edits)
    else:
        text = "w " + " ".join(f"{'-' if s < 0 else '+'} {abs(s):g} x {n}" for n, s in edits)
    return text + (f" (style inputs {layers})" if layers else "")


def interpolate_names(names_a: list[str], names_b: list[str], between: str = "__") -> list[str]:
    """The (a, b) pairs of an interpolation as output names 'A__B' (or labels 'A -> B'): the same number of each,
    or one of either."""
    if len(names_a) != len(names_b) and 1 not in (len(names_a), len(names_b)):
        raise InputError(f"--b: {len(names_b)} input(s) against {len(names_a)} in --a; give as many, or one of either")
    n = max(len(names_a), len(names_b))
    return [f"{names_a[0 if len(names_a) == 1 else i]}{between}{names_b[0 if len(names_b) == 1 else i]}"
            for i in range(n)]


def cmd_interpolate(args: argparse.Namespace) -> int:
    check_input_options(args)
    src_a, src_b = read_sources(args.a), read_sources(args.b)
    pairs = interpolate_names(src_a.names, src_b.names)
    labels = interpolate_names(src_a.labels, src_b.labels, " -> ")
    out = out_dir(args.out)
    rt = make_runtime(args)
    src_a, src_b = _checked(rt, src_a), _checked(rt, src_b)
    w_a, w_b = _latents(rt, args, src_a, "a"), _latents(rt, args, src_b, "b")
    path = rt.interpolate(w_a, w_b, args.steps)  # [steps, n, D] or [steps, n, 2L, D]
    np.save(out / "latents.npy", host(path))  # first: a run stopped part-way keeps the latents of every frame
    n = len(pairs)
    shown_steps, shown_pairs = grids.frames_shown(args.steps, n, grids.grid_capacity(rt.config.resolution))
    noise_of = _noise_of_rows(rt, n, args.noise, args.seed)  # the same maps for every frame, as the server's
    frames: list[list[np.ndarray]] = [[] for _ in range(shown_pairs)]
    written = Written(n * args.steps, "frame(s)", out)
    with progress_bar(args, n * args.steps, "interpolate") as bar, reporting(args, written):
        for index, w in enumerate(path):
            for sl in _slices(n, rt.max_batch):
                images = rt.decode_uint8(w[sl], noise=noise_of(sl)).cpu().numpy()
                save_images(images, [f"{name}_t{index:03d}" for name in pairs[sl]], out, written)
                if index in shown_steps:
                    for k in range(sl.start, min(sl.stop, shown_pairs)):
                        frames[k].append(images[k - sl.start].copy())
                bar.update(len(images))
    ts = [i / (args.steps - 1) for i in shown_steps]
    grid = grids.interpolate_grid(frames, labels[:shown_pairs], ts, grids.file_names_only(rt.source),
                                  total=(n, args.steps))
    grids.save_grid(grid, out / "grid.png", args)
    print(f"wrote {n * args.steps} frame(s) of {n} interpolation(s), latents.npy [steps, N, ...] and grid.png "
          f"to {out}")
    return 0
