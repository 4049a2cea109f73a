"""`alae-rt client ...`: the local commands' options and outputs, computed by an alae-rt server.

Starts without torch; alae_rt.serve.client is imported when a call runs. Every verb sends its inputs in requests
within the server's limits (GetModelInfo: max_images, max_message_bytes), one progress-bar step per request,
writes each request's results as they come, and retries UNAVAILABLE for --retry-s seconds. A verb that fails
part-way says how much it wrote.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alae_rt.cli import grids
from alae_rt.cli.options import (
    add_edit_args,
    add_generate_args,
    add_images_arg,
    add_interpolate_args,
    add_mix_args,
    add_noise_args,
    add_out_arg,
    check_input_options,
    out_dir,
    out_file,
    parse_directions,
    parse_layers,
    parse_seeds,
    positive_seconds,
    progress_bar,
    say,
    seconds,
    server_address,
)
from alae_rt.cli.outputs import NpyRows, Written, image_names, latent_names, reporting, save_images, seed_names
from alae_rt.cli.sources import Sources, check_latent_array, read_latents, read_npy, read_sources
from alae_rt.errors import AlaeError, InputError

CLIENT_HELP = """\
Call an alae-rt server. Images are sent as the files they are; results are written like the local
commands (PNGs, .npy, grid.png). --server HOST:PORT (default 127.0.0.1:50051)."""


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    """Register `client` and its calls (the CLI's EXTERNAL_COMMANDS hook)."""
    p = subparsers.add_parser(name, help=help_text, description=CLIENT_HELP)
    sub = p.add_subparsers(dest="client_command", metavar="CALL", required=True)

    def add(call: str, text: str, func) -> argparse.ArgumentParser:
        c = sub.add_parser(call, help=text, description=text)
        c.set_defaults(func=func)
        g = c.add_argument_group("connection")
        g.add_argument("--server", type=server_address, default="127.0.0.1:50051", metavar="HOST:PORT",
                       help="the server (default 127.0.0.1:50051)")
        g.add_argument("--token-file", metavar="PATH", help="bearer token for a server started with --auth-token-file")
        g.add_argument("--tls-ca", metavar="PEM",
                       help="connect with TLS, trusting this CA (or self-signed) certificate")
        g.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
        g.add_argument("--server-name", help="TLS: the name the certificate is for, when HOST differs")
        g.add_argument("--timeout", type=positive_seconds, default=600.0, help="seconds per call (default 600)")
        g.add_argument("--retry-s", type=seconds, default=30.0, metavar="SECONDS",
                       help="retry a call that gets UNAVAILABLE (server warming up, draining, restarting) with "
                            "backoff for up to this long (default 30; 0: never)")
        return c

    c = add("info", "the server's model (config, resolution, latent size, directions, backend, device) and limits",
            cmd_info)
    c.add_argument("--json", action="store_true", help="print JSON")

    c = add("health", "the standard gRPC health check: prints SERVING, NOT_SERVING, ...; exit 0 when SERVING",
            cmd_health)
    c.add_argument("--wait", type=seconds, default=0.0, metavar="SECONDS",
                   help="wait up to this long for SERVING (while the server starts and warms up)")

    c = add("encode", "encode images into W on the server: writes w [N, D] as .npy", cmd_encode)
    add_images_arg(c)
    add_out_arg(c, "output .npy file")

    c = add("reconstruct", "encode and decode images on the server: PNGs and grid.png (original | reconstruction)",
            cmd_reconstruct)
    add_images_arg(c)
    add_out_arg(c, "output directory")
    add_noise_args(c)

    c = add("decode", "decode latents (.npy of [N, D] or [N, 2L, D]) into PNG images on the server", cmd_decode)
    c.add_argument("latents", help=".npy file")
    add_out_arg(c, "output directory")
    add_noise_args(c)

    c = add("generate", "generate images from seeds on the server: PNGs, styles.npy, grid.png", cmd_generate)
    add_generate_args(c)

    c = add("edit", "move images or latents along W-space directions on the server", cmd_edit)
    add_edit_args(c, "NAME is one of the server's directions (client info) or a local .npy file; repeatable")

    c = add("mix", "style mixing on the server: coarse styles from A, the rest from B; writes a grid", cmd_mix)
    add_mix_args(c)

    c = add("interpolate", "frames from A to B, linear in W, on the server: PNGs, latents.npy, grid.png",
            cmd_interpolate)
    add_interpolate_args(c)
    return p


def _client(args: argparse.Namespace):
    from alae_rt.serve.client import AlaeClient

    told = []

    def on_retry(message: str) -> None:  # said once a call, not at every try
        if message not in told:
            told.append(message)
            say(args, message)

    return AlaeClient(args.server, token_file=args.token_file, tls=args.tls, tls_ca=args.tls_ca,
                      server_name=args.server_name, timeout=args.timeout, retry_s=args.retry_s, on_retry=on_retry)


def _info_dict(info) -> dict:
    from google.protobuf.json_format import MessageToDict

    d = MessageToDict(info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    d["config"] = json.loads(d.pop("config_json"))
    return d


def cmd_info(args: argparse.Namespace) -> int:
    with _client(args) as c:
        info = c.info()
    if args.json:
        print(json.dumps(_info_dict(info), indent=2))
        return 0
    print(f"server:      {args.server} (alae-rt {info.version})")
    print(f"model:       {info.config_name}: {info.resolution}x{info.resolution}x{info.channels}, "
          f"D={info.latent_size}, L={info.layer_count} ({info.num_styles} style inputs)")
    print(f"weights:     {info.weights}")
    print(f"runs on:     backend {info.backend}, device {info.device}, dtype {info.dtype}"
          + (f", method {info.method}" if info.method else ""))
    if not info.directions:
        print("directions:  none (pass a .npy to edit --direction)")
    else:
        print(f"directions:  {len(info.directions)}, for edit --direction NAME=STRENGTH (label, strength range):")
        described = {d.name: d for d in info.direction_info}
        width = max(map(len, info.directions))
        for name in info.directions:
            d = described.get(name)
            about = f"{d.label if d.label != name else ''}  [{d.min:g}, {d.max:g}]".strip() if d else ""
            print(f"  {name:<{width}}  {about}".rstrip())
    print(f"limits:      {info.max_images} images per request, batches of up to {info.max_batch}, "
          f"{info.max_message_bytes / 2**20:g} MiB per message, {info.max_pixels} pixels per image")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from alae_rt.serve.client import RemoteError

    deadline = time.monotonic() + args.wait
    with _client(args) as c:
        while True:
            try:
                status = c.health(timeout=max(1.0, min(args.timeout, 5.0)))
            except RemoteError as exc:
                status, error = None, exc
            if status == "SERVING" or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    if status is None:
        raise error
    print(status)
    return 0 if status == "SERVING" else 1


# ---- requests within the server's limits -------------------------------------------------------------------


def per_request(info) -> int:
    """Latents or seeds a request may carry: the server's max_images, and few enough that the response's images
    (at most R x R x C bytes each, raw) fill at most half a message."""
    image_bytes = max(1, info.resolution * info.resolution * info.channels)
    return max(1, min(info.max_images, info.max_message_bytes // 2 // image_bytes))


def _slices(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _batches(paths: Sequence[Path], max_images: int, max_bytes: int) -> Iterator[list[Path]]:
    """Files in request-sized groups: at most max_images, and about half the message limit in bytes."""
    batch, size = [], 0
    for p in paths:
        n = p.stat().st_size
        if batch and (len(batch) == max_images or size + n > max_bytes // 2):
            yield batch
            batch, size = [], 0
        batch.append(p)
        size += n
    if batch:
        yield batch


def _path_slices(paths: Sequence[Path], info) -> Iterator[slice]:
    """`_batches` as slices of `paths`."""
    start = 0
    for batch in _batches(paths, per_request(info), info.max_message_bytes):
        yield slice(start, start + len(batch))
        start += len(batch)


def _for_files(paths: Sequence[Path], sl: slice, send: Callable[..., Any], **kwargs: Any) -> Any:
    """send(paths[sl], **kwargs): a request of those images; a server error about `images[k]` (k counts within that
    request, one of several) names the file instead."""
    from alae_rt.serve.client import RemoteError

    try:
        return send(paths[sl], **kwargs)
    except RemoteError as exc:
        def file_of(m: re.Match) -> str:
            k = sl.start + int(m.group(1))
            return str(paths[k]) if k < sl.stop else m.group(0)

        raise AlaeError(re.sub(r"\b(?:\w+\.)*images\[(\d+)\](?:\.encoded|\.raw)?", file_of, str(exc))) from None


def _source_latents(c, args: argparse.Namespace, src: Sources, info, noise: dict, decode: bool, bar,
                    on_part: Callable[[slice, np.ndarray, list | None], None] | None = None, keep: int | None = None):
    """A source's latents on the server, request by request -> (latents, the first `keep` (default all) of their
    decoded images, or None).

    Images are encoded (and with `decode`, reconstructed in the same call); seeds generated (with their images);
    latents sent for decoding when `decode`. `on_part(rows, latents, images)` hears of each request's results."""
    n = len(src.names)
    parts, images = [], []
    if src.paths is not None:
        slices = list(_path_slices(src.paths, info))
    else:
        slices = list(_slices(n, per_request(info)))
    for sl in slices:
        if src.paths is not None:
            if decode:
                r = _for_files(src.paths, sl, c.reconstruct, return_latents=True, **noise)
                w, imgs = r.latents, r.images
            else:
                w, imgs = _for_files(src.paths, sl, c.encode), None
        elif src.seeds is not None:
            r = c.generate(seeds=src.seeds[sl], psi=args.psi, return_latents=True, **noise)
            w, imgs = r.latents, r.images
        else:
            w = src.latents[sl]
            imgs = c.decode(w, **noise).images if decode else None
        parts.append(w)
        if imgs is not None:
            images.extend(imgs if keep is None else imgs[:max(0, keep - len(images))])
        if on_part is not None:
            on_part(sl, w, imgs)
        if bar is not None:
            bar.update(sl.stop - sl.start)
    return np.concatenate(parts), (images if decode or src.seeds is not None else None)


def _originals(paths: Sequence[Path], info) -> list[np.ndarray]:
    """The inputs as the model sees them (centre crop, R x R), for the grids (numpy: no torch in the client)."""
    from alae_rt.images import read_image

    return [grids.model_view(read_image(p), info.resolution, info.channels, str(p)) for p in paths]


def _weights(info) -> str:
    return info.weights


# ---- calls ---------------------------------------------------------------------------------------------------


def cmd_encode(args: argparse.Namespace) -> int:
    from alae_rt.images import list_images

    out = out_file(args.out, ".npy")
    paths = list_images(args.images)
    parts: list[np.ndarray] = []
    written = Written(len(paths), "latents (the first images' rows, in input order)", out)
    with _client(args) as c, progress_bar(args, len(paths), "encode") as bar:
        info = c.info()
        with reporting(args, written, lambda n: np.save(out, np.concatenate(parts)[:n])):
            for sl in _path_slices(paths, info):
                parts.append(_for_files(paths, sl, c.encode))
                written.add(sl.stop - sl.start)
                bar.update(sl.stop - sl.start)
    w = np.concatenate(parts)
    np.save(out, w)
    print(f"wrote w {list(w.shape)} for {len(paths)} image(s) to {out}")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    raw = read_latents(args.latents)
    out = out_dir(args.out)
    noise = {"noise": args.noise, "seed": args.seed}
    with _client(args) as c:
        info = c.info()
        if raw.ndim == 1:
            say(args, f"{args.latents}: one w [{raw.shape[0]}], decoded as [1, {raw.shape[0]}]")
        w = check_latent_array(raw, info.latent_size, info.num_styles, args.latents)
        names = latent_names(args.latents, len(w))
        written = Written(len(w), "image(s)", out)
        with progress_bar(args, len(w), "decode") as bar, reporting(args, written):
            for sl in _slices(len(w), per_request(info)):
                images = c.decode(w[sl], **noise).images
                save_images(images, names[sl], out, written)
                bar.update(len(images))
    print(f"wrote {written.count} image(s) ({names[0]}.png ...) to {out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from alae_rt.images import list_images

    paths = list_images(args.images)
    out = out_dir(args.out)
    names = image_names(paths)
    recs: list[np.ndarray] = []  # the first ones, for the grid
    written = Written(len(paths), "reconstruction(s)", out)
    with _client(args) as c:
        info = c.info()
        shown = min(len(paths), grids.grid_capacity(info.resolution))
        with progress_bar(args, len(paths), "reconstruct") as bar, reporting(args, written):
            for sl in _path_slices(paths, info):
                images = _for_files(paths, sl, c.reconstruct, noise=args.noise, seed=args.seed).images
                save_images(images, names[sl], out, written)
                recs.extend(images[:max(0, shown - len(recs))])
                bar.update(len(images))
    grid = grids.reconstruct_grid(_originals(paths[:shown], info), recs, _weights(info), total=len(paths))
    grids.save_grid(grid, out / "grid.png", args)
    print(f"wrote {len(paths)} reconstruction(s) and grid.png (original | reconstruction) to {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from alae_rt.cli.ops import generate_caption

    seeds = parse_seeds(args.seeds, "--seeds")  # the Runtime's range (the wire's), before any call
    check_input_options(args)
    out = out_dir(args.out)
    names = seed_names(seeds)
    images: list[np.ndarray] = []  # the first ones, for the grid
    written = Written(len(seeds), "image(s)", out)

    def interrupted(n: int) -> None:
        styles.finish(n)
        say(args, f"wrote styles.npy of the {n} image(s) written")

    # styles.npy [N, 2L, D]: a request's rows go before its images
    with _client(args) as c, NpyRows(out / "styles.npy") as styles:
        info = c.info()
        shown = min(len(seeds), grids.grid_capacity(info.resolution))
        with progress_bar(args, len(seeds), "generate") as bar, reporting(args, written, interrupted):
            for sl in _slices(len(seeds), per_request(info)):
                r = c.generate(seeds=seeds[sl], psi=args.psi, cutoff=args.cutoff, noise=args.noise, seed=args.seed,
                               return_latents=True)
                styles.add(r.latents)
                save_images(r.images, names[sl], out, written)
                images.extend(r.images[:max(0, shown - len(images))])
                bar.update(len(r.images))
        styles.finish()
    psi = info.truncation_psi if args.psi is None else args.psi
    cutoff = info.truncation_cutoff if args.cutoff is None else args.cutoff
    caption = [generate_caption(len(seeds), psi, cutoff, info.num_styles, args.noise, args.seed),
               f"weights: {_weights(info)}"]
    grid = grids.generate_grid(images, [f"seed {s}" for s in seeds[:shown]], caption, total=len(seeds))
    grids.save_grid(grid, out / "grid.png", args)
    print(f"wrote {len(images)} image(s), styles.npy [N, 2L, D] and grid.png to {out}")
    return 0


def _direction_value(name: str):
    """A direction NAME: a local .npy file is sent as its vector; anything else is the server's name."""
    if name.endswith(".npy"):
        arr = read_npy(name, "direction")
        if arr.dtype.kind not in "fiu":
            raise InputError(f"{name}: a direction holds numbers, got {arr.dtype}")
        return arr.astype(np.float32)
    return name


def cmd_edit(args: argparse.Namespace) -> int:
    from alae_rt.cli.ops import edit_note

    check_input_options(args)
    named = parse_directions(args.direction)
    edits = [(_direction_value(n), s) for n, s in named]
    layers = parse_layers(args)
    src0 = read_sources(args.inputs)
    out = out_dir(args.out)
    noise = {"noise": args.noise, "seed": args.seed}
    edited_images: list[np.ndarray] = []
    edited_latents: list[np.ndarray] = []
    n = len(src0.names)
    written = Written(n, "edited image(s)", out)

    def save_latents(rows: int | None = None) -> None:
        np.save(out / "edited.npy", np.concatenate(edited_latents)[:rows])

    with _client(args) as c:
        info = c.info()
        src = src0.checked(info.latent_size, info.num_styles)
        shown = min(n, grids.grid_capacity(info.resolution))
        say(args, f"edit: {n} input(s) on {args.server}")

        def edit_part(sl: slice, w: np.ndarray, images: list | None) -> None:
            r = c.edit(w, edits, mode=args.mode, layers=layers, return_latents=True, **noise)
            edited_latents.append(r.latents)
            save_images(r.images, src.names[sl], out, written)
            edited_images.extend(r.images[:max(0, shown - len(edited_images))])

        with progress_bar(args, n, "edit") as bar, reporting(args, written, save_latents):
            _, decoded = _source_latents(c, args, src, info, noise, True, bar, on_part=edit_part, keep=shown)
    save_latents()
    originals = _originals(src.paths[:shown], info) if src.paths is not None else None
    grid, columns = grids.edit_grid(originals, decoded, edited_images, grids.edit_label(named, args.mode),
                                    _weights(info), edit_note(named, args.mode, args.layers), total=n)
    grids.save_grid(grid, out / "grid.png", args)
    print(f"wrote {n} edited image(s), edited.npy and grid.png ({columns}) to {out}")
    return 0


def _both_ends(c, args: argparse.Namespace, info, src_a: Sources, src_b: Sources, noise: dict, images: bool,
               keep: tuple[int | None, int | None] = (None, None)):
    """The two sides of mix and interpolate, checked against the server's model -> (sources, latents, images or
    None) for each; with `images`, latents and seeds are decoded, the first `keep` of each side kept (photos are
    shown as the model sees them)."""
    src_a, src_b = (s.checked(info.latent_size, info.num_styles) for s in (src_a, src_b))
    with progress_bar(args, len(src_a.names) + len(src_b.names), "inputs") as bar:
        return tuple((s, *_source_latents(c, args, s, info, noise, images and s.paths is None, bar, keep=k))
                     for s, k in ((src_a, keep[0]), (src_b, keep[1])))


def cmd_mix(args: argparse.Namespace) -> int:
    check_input_options(args)
    src_a0, src_b0 = read_sources(args.a), read_sources(args.b)
    out = out_dir(args.out)
    noise = {"noise": args.noise, "seed": args.seed}
    total = len(src_a0.names) * len(src_b0.names)
    written = Written(total, "mix(es)", out)
    with _client(args) as c:
        info = c.info()
        n_a, n_b = len(src_a0.names), len(src_b0.names)
        rows, cols = grids.mix_shown(n_a, n_b, grids.grid_capacity(info.resolution))
        (src_a, w_a, images_a), (src_b, w_b, images_b) = _both_ends(c, args, info, src_a0, src_b0, noise, True,
                                                                    keep=(rows, cols))
        images_a = images_a if images_a is not None else _originals(src_a.paths[:rows], info)
        images_b = images_b if images_b is not None else _originals(src_b.paths[:cols], info)
        mixed = []
        with progress_bar(args, total, "mix") as bar, reporting(args, written):
            for i, name_a in enumerate(src_a.names):  # one row of the grid: a_i against every b
                row: list[np.ndarray] = []
                for sl in _slices(n_b, per_request(info)):
                    images = c.mix(w_a[i:i + 1], w_b[sl], args.cutoff, **noise).images
                    save_images(images, [f"mix_{name_a}__{name_b}" for name_b in src_b.names[sl]], out, written)
                    if i < rows:
                        row.extend(images[:max(0, cols - len(row))])
                    bar.update(len(images))
                if i < rows:
                    mixed.append(row)
    grid = grids.mix_grid(images_a, images_b, mixed, src_a.labels[:rows], src_b.labels[:cols], args.cutoff,
                          _weights(info), total=(n_a, n_b))
    grids.save_grid(grid, out / "grid.png", args)
    print(f"wrote {total} mix(es) and grid.png (rows: a = styles < {args.cutoff}; columns: b) to {out}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from alae_rt.cli.ops import interpolate_names

    check_input_options(args)
    src_a0, src_b0 = read_sources(args.a), read_sources(args.b)
    out = out_dir(args.out)
    noise = {"noise": args.noise, "seed": args.seed}
    with _client(args) as c:
        info = c.info()
        (src_a, w_a, _), (src_b, w_b, _) = _both_ends(c, args, info, src_a0, src_b0, noise, False)
        pairs = interpolate_names(src_a.names, src_b.names)
        labels = interpolate_names(src_a.labels, src_b.labels, " -> ")
        n = len(pairs)
        shown_steps, shown_pairs = grids.frames_shown(args.steps, n, grids.grid_capacity(info.resolution))
        frames: list[list[np.ndarray]] = [[] for _ in range(shown_pairs)]  # [pair][step], those the grid shows
        latents: list[list[np.ndarray]] = [[] for _ in range(args.steps)]  # [step][parts]
        ts = [i / (args.steps - 1) for i in shown_steps]
        written = Written(n * args.steps, "frame(s)", out)
        with progress_bar(args, n * args.steps, "interpolate") as bar, reporting(args, written):
            for sl in _slices(n, per_request(info)):
                a = w_a if len(w_a) == 1 else w_a[sl]  # a batch of 1 pairs with every row of the other end
                b = w_b if len(w_b) == 1 else w_b[sl]
                for index, _, r in c.interpolate(a, b, args.steps, return_latents=True, **noise):
                    save_images(r.images, [f"{name}_t{index:03d}" for name in pairs[sl]], out, written)
                    if index in shown_steps:
                        for k in range(sl.start, min(sl.stop, shown_pairs)):
                            frames[k].append(r.images[k - sl.start])
                    latents[index].append(r.latents)
                    bar.update(len(r.images))
    np.save(out / "latents.npy", np.stack([np.concatenate(parts) for parts in latents]))
    grid = grids.interpolate_grid(frames, labels[:shown_pairs], ts, _weights(info), total=(n, args.steps))
    grids.save_grid(grid, out / "grid.png", args)
    print(f"wrote {n * args.steps} frame(s) of {n} interpolation(s), latents.npy [steps, N, ...] and grid.png "
          f"to {out}")
    return 0

