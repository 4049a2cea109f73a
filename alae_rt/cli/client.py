"""`alae-rt client ...`: the local commands' options and outputs, computed by an alae-rt server.

Starts without torch (only the grids' originals load it); alae_rt.serve.client is imported when a call runs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from alae_rt.cli import grids
from alae_rt.cli.options import (
    add_edit_args,
    add_generate_args,
    add_images_arg,
    add_mix_args,
    add_noise_args,
    add_out_arg,
    out_dir,
    out_file,
    parse_direction,
    parse_int_list,
    parse_layers,
    progress_bar,
    save_images,
    say,
)
from alae_rt.cli.sources import Sources, read_sources
from alae_rt.errors import InputError

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
        g.add_argument("--server", default="127.0.0.1:50051", metavar="HOST:PORT",
                       help="the server (default 127.0.0.1:50051)")
        g.add_argument("--token-file", metavar="PATH", help="bearer token for a server started with --auth-token-file")
        g.add_argument("--tls-ca", metavar="PEM",
                       help="connect with TLS, trusting this CA (or self-signed) certificate")
        g.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
        g.add_argument("--server-name", help="TLS: the name the certificate is for, when HOST differs")
        g.add_argument("--timeout", type=float, default=600.0, help="seconds per call (default 600)")
        return c

    c = add("info", "the server's model (config, resolution, latent size, directions, backend, device) and limits",
            cmd_info)
    c.add_argument("--json", action="store_true", help="print JSON")

    c = add("health", "the standard gRPC health check: prints SERVING, NOT_SERVING, ...; exit 0 when SERVING",
            cmd_health)
    c.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for SERVING (while the server starts and warms up)")

    c = add("encode", "encode images into W on the server: writes w [N, D] as .npy", cmd_encode)
    add_images_arg(c)
    add_out_arg(c, "output .npy file")

    c = add("reconstruct", "encode and decode images on the server: PNGs and grid.png (original | reconstruction)",
            cmd_reconstruct)
    add_images_arg(c)
    add_out_arg(c, "output directory")
    add_noise_args(c)

    c = add("generate", "generate images from seeds on the server: PNGs, styles.npy, grid.png", cmd_generate)
    add_generate_args(c)

    c = add("edit", "move images or latents along W-space directions on the server", cmd_edit)
    add_edit_args(c, "NAME is one of the server's directions (client info) or a local .npy file; repeatable")

    c = add("mix", "style mixing on the server: coarse styles from A, the rest from B; writes a grid", cmd_mix)
    add_mix_args(c)
    return p


def _client(args: argparse.Namespace):
    from alae_rt.serve.client import AlaeClient

    return AlaeClient(args.server, token_file=args.token_file, tls=args.tls, tls_ca=args.tls_ca,
                      server_name=args.server_name, timeout=args.timeout)


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
    print(f"runs on:     backend {info.backend}, device {info.device}, dtype {info.dtype}")
    print(f"directions:  {', '.join(info.directions) or 'none (pass a .npy to edit --direction)'}")
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


# ---- requests ------------------------------------------------------------------------------------------------


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


def _send_images(c, args, paths: list[Path], desc: str, call) -> list:
    """`call` on the files in requests the server takes (its limits), one bar update per request."""
    info = c.info()
    out = []
    with progress_bar(args, len(paths), desc) as bar:
        for batch in _batches(paths, info.max_images, info.max_message_bytes):
            out.append(call(batch))
            bar.update(len(batch))
    return out


def _originals(paths: Sequence[Path], info) -> list[np.ndarray]:
    """The inputs as the model sees them (centre crop, R x R), for the grids."""
    from alae_rt.images import image_to_tensor, read_image, to_uint8

    return [to_uint8(image_to_tensor(read_image(p), info.resolution, info.channels)[None])[0] for p in paths]


def _source(args: argparse.Namespace, items: Sequence[str], info):
    """A command's sources as a request takes them -> (Sources, latents / Seeds / image paths)."""
    from alae_rt.serve.client import Seeds

    src: Sources = read_sources(items, info.latent_size, info.num_styles)
    if src.latents is not None:
        return src, src.latents
    if src.seeds is not None:
        return src, Seeds(src.seeds, args.psi)
    return src, src.paths


def _latents_and_images(c, source, noise: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """Latents of a source and their decoded images, so that each input is sent (and encoded) once."""
    from alae_rt.serve.client import Seeds

    if isinstance(source, Seeds):
        r = c.generate(seeds=source.seeds, psi=source.psi, return_latents=True, **noise)
        return r.latents, r.images
    w = source if isinstance(source, np.ndarray) else c.encode(source)
    return w, c.decode(w, **noise).images


# ---- calls ---------------------------------------------------------------------------------------------------


def cmd_encode(args: argparse.Namespace) -> int:
    from alae_rt.images import list_images

    out = out_file(args.out, ".npy")
    paths = list_images(args.images)
    with _client(args) as c:
        ws = _send_images(c, args, paths, "encode", c.encode)
    w = np.concatenate(ws)
    np.save(out, w)
    print(f"wrote w {list(w.shape)} for {len(paths)} image(s) to {out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from alae_rt.images import list_images

    out = out_dir(args.out)
    paths = list_images(args.images)
    with _client(args) as c:
        info = c.info()
        parts = _send_images(c, args, paths, "reconstruct",
                             lambda batch: c.reconstruct(batch, noise=args.noise, seed=args.seed).images)
    recs = [img for part in parts for img in part]
    save_images(recs, [f"{i:04d}_{p.stem}" for i, p in enumerate(paths)], out)
    grids.save_grid(grids.reconstruct_rows(_originals(paths, info), recs), out / "grid.png", args)
    print(f"wrote {len(recs)} reconstruction(s) and grid.png (original | reconstruction) to {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    out = out_dir(args.out)
    seeds = parse_int_list(args.seeds)
    images, styles = [], []
    with _client(args) as c:
        info = c.info()
        with progress_bar(args, len(seeds), "generate") as bar:
            for start in range(0, len(seeds), info.max_images):  # requests within the server's limit
                part = seeds[start:start + info.max_images]
                r = c.generate(seeds=part, psi=args.psi, cutoff=args.cutoff, noise=args.noise, seed=args.seed,
                               return_latents=True)
                images.extend(r.images)
                styles.append(r.latents)
                bar.update(len(part))
    save_images(images, [f"seed{s:04d}" for s in seeds], out)
    np.save(out / "styles.npy", np.concatenate(styles))
    grids.save_grid(grids.generate_rows(images), out / "grid.png", args)
    print(f"wrote {len(images)} image(s), styles.npy [N, 2L, D] and grid.png to {out}")
    return 0


def _direction_value(name: str):
    """A direction NAME: a local .npy file is sent as its vector; anything else is the server's name."""
    if name.endswith(".npy"):
        path = Path(name)
        try:
            return np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable .npy direction ({exc})") from None
    return name


def cmd_edit(args: argparse.Namespace) -> int:
    out = out_dir(args.out)
    edits = [(_direction_value(n), s) for n, s in (parse_direction(d) for d in args.direction)]
    layers = parse_layers(args)
    noise = {"noise": args.noise, "seed": args.seed}
    with _client(args) as c:
        info = c.info()
        src, source = _source(args, args.inputs, info)
        say(args, f"edit: {len(src.names)} input(s) on {args.server}")
        w, decoded = _latents_and_images(c, source, noise)
        edited = c.edit(w, edits, mode=args.mode, layers=layers, return_latents=True, **noise)
    originals = _originals(src.paths, info) if src.paths is not None else None
    save_images(edited.images, src.names, out)
    np.save(out / "edited.npy", edited.latents)
    rows, columns = grids.edit_rows(originals, decoded, edited.images)
    grids.save_grid(rows, out / "grid.png", args)
    print(f"wrote {len(edited.images)} edited image(s), edited.npy and grid.png ({columns}) to {out}")
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    out = out_dir(args.out)
    noise = {"noise": args.noise, "seed": args.seed}
    with _client(args) as c:
        info = c.info()
        src_a, a = _source(args, args.a, info)
        src_b, b = _source(args, args.b, info)
        w_a, images_a = _latents_and_images(c, a, noise)
        w_b, images_b = _latents_and_images(c, b, noise)
        mixed = []
        for i, name_a in enumerate(src_a.names):  # one row of the grid: a_i against every b
            row = c.mix(w_a[i:i + 1], w_b, args.cutoff, **noise).images
            save_images(row, [f"mix_{name_a}__{name_b}" for name_b in src_b.names], out)
            mixed.append(row)
    grids.save_grid(grids.mix_rows(images_a, images_b, mixed), out / "grid.png", args)
    print(f"wrote {len(src_a.names) * len(src_b.names)} mix(es) and grid.png (rows: a = styles < {args.cutoff}; "
          f"columns: b) to {out}")
    return 0
