"""`alae-rt serve` (the gRPC server) and `alae-rt client ...` (its command-line client)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from alae_rt.cli import (
    _columns,
    add_model_args,
    add_noise_args,
    backend_options,
    load_latents,
    out_dir,
    out_file,
    parse_direction,
    parse_int_list,
    progress_bar,
    say,
)
from alae_rt.errors import InputError

SERVE_HELP = """\
Serve the model over gRPC (service alae_rt.v1.Alae; its .proto ships in alae_rt/serve/protos).

Requests from all callers are merged by a dynamic batcher (up to --max-batch images per forward pass,
waiting at most --max-delay-ms for a batch to fill). Health (grpc.health.v1) says NOT_SERVING while the
model warms up and while the server drains; reflection is on; Prometheus metrics are on --metrics-port.
SIGTERM or Ctrl-C drains: new calls get UNAVAILABLE, calls in flight finish within --grace-s.
Logs are JSON lines on stderr (--log-format text for people)."""

CLIENT_HELP = """\
Call an alae-rt server. Images are sent as the files they are; results are written like the local
commands (PNGs, .npy, grid.png). --server HOST:PORT (default 127.0.0.1:50051)."""


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    """Register `serve` or `client` (the CLI's EXTERNAL_COMMANDS hook)."""
    if name == "serve":
        return _add_serve(subparsers, name, help_text)
    if name == "client":
        return _add_client(subparsers, name, help_text)
    raise ValueError(f"alae_rt.cli.client has no command {name!r}")


# ---- serve ----------------------------------------------------------------------------------------------------


def _add_serve(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    from alae_rt.serve.server import ServeConfig

    d = ServeConfig()
    p = subparsers.add_parser(name, help=help_text, description=SERVE_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_serve)
    add_model_args(p)
    m = p.add_argument_group("model (more)")
    m.add_argument("--preset", help="serve random weights of a preset instead of a checkpoint (tests, benchmarks; "
                                    "not a trained model)")
    m.add_argument("--directions-dir", metavar="DIR",
                   help="folder of W-space direction .npy files that Edit can name (official FFHQ "
                        "direction_<k>.npy also answer to smile, young, ...)")
    m.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    n = p.add_argument_group("network")
    n.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host}; 0.0.0.0 or [::] "
                                                  "for every interface)")
    n.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port}; 0: any free port)")
    n.add_argument("--port-file", metavar="PATH", help="write the port here once listening (useful with --port 0)")
    n.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain (needs --tls-key)")
    n.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    n.add_argument("--auth-token-file", metavar="PATH",
                   help="require 'authorization: Bearer <token>' with a token from this file (one a line); "
                        "health checks are exempt; others get UNAUTHENTICATED")
    n.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (default: off)")
    n.add_argument("--metrics-host", default=d.metrics_host, help=f"metrics address (default {d.metrics_host})")
    b = p.add_argument_group("batching and limits")
    b.add_argument("--max-batch", dest="batch_size", type=int, metavar="N",
                   help="most images per forward pass: requests are merged up to this (same as --batch-size)")
    b.add_argument("--max-delay-ms", type=float, default=d.max_delay_ms,
                   help=f"longest a request waits for its batch to fill (default {d.max_delay_ms:g})")
    b.add_argument("--max-queue", type=int, default=d.max_queue,
                   help=f"images waiting per operation before new calls get RESOURCE_EXHAUSTED (default {d.max_queue})")
    b.add_argument("--max-images", type=int, default=d.max_images,
                   help=f"images, seeds or latents per request (default {d.max_images})")
    b.add_argument("--max-message-mb", type=float, default=d.max_message_mb,
                   help=f"largest request or response in MiB (default {d.max_message_mb:g})")
    b.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help=f"largest input image in pixels, checked before decoding (default {d.max_pixels})")
    b.add_argument("--max-strength", type=float, default=d.max_strength,
                   help=f"largest |strength| of an edit (default {d.max_strength:g})")
    b.add_argument("--max-steps", type=int, default=d.max_steps,
                   help=f"most frames of an Interpolate call (default {d.max_steps})")
    b.add_argument("--workers", type=int, default=d.workers,
                   help=f"threads that decode and encode image files (default {d.workers})")
    o = p.add_argument_group("operation")
    o.add_argument("--grace-s", type=float, default=d.grace_s,
                   help=f"on SIGTERM, how long calls in flight may take to finish (default {d.grace_s:g})")
    o.add_argument("--no-warmup", action="store_true", help="skip the warm-up forward passes at start")
    o.add_argument("--log-format", choices=["json", "text"], default="json", help="log lines (default json)")
    o.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="info logs every call; warning only failures (default info)")
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from alae_rt.runtime import Runtime
    from alae_rt.serve.server import AlaeServer, ServeConfig, read_tokens, setup_logging

    setup_logging(args.log_format, args.log_level)
    if args.threads is not None:
        if args.threads < 1:
            raise InputError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.preset and args.checkpoint:
        raise InputError("give --checkpoint or --preset, not both")
    cfg = ServeConfig(
        host=args.host, port=args.port, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
        max_images=args.max_images, max_message_mb=args.max_message_mb, max_pixels=args.max_pixels,
        max_strength=args.max_strength, max_steps=args.max_steps, grace_s=args.grace_s,
        metrics_port=args.metrics_port, metrics_host=args.metrics_host,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None, tls_key=Path(args.tls_key) if args.tls_key else None,
        auth_tokens=read_tokens(args.auth_token_file) if args.auth_token_file else (), workers=args.workers,
        warmup=not args.no_warmup)
    cfg.check(args.batch_size)
    common = {"device": args.device, "dtype": args.dtype, "backend": args.backend, "max_batch": args.batch_size,
              "backend_options": backend_options(args)}
    if args.preset:
        rt = Runtime.from_config(args.preset, **common)
    else:
        rt = Runtime.load(args.checkpoint, config=args.config, trust_pickle=args.trust_pickle, **common)
    if args.directions_dir:
        rt.load_directions(args.directions_dir)
    server = AlaeServer(rt, cfg)

    async def run() -> None:
        if args.port_file:
            # written once listening, before the warm-up: health answers from then on
            task = asyncio.get_running_loop().create_task(server.serve_until_signal())
            while not server.port and not task.done():
                await asyncio.sleep(0.01)
            if server.port:
                Path(args.port_file).write_text(f"{server.port}\n")
            await task
        else:
            await server.serve_until_signal()

    asyncio.run(run())
    return 0


# ---- client -----------------------------------------------------------------------------------------------------


def _add_client(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
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

    sources = "image files/directories, one .npy of latents, or seeds:SPEC (e.g. seeds:0-3)"
    c = add("encode", "encode images into W on the server: writes w [N, D] as .npy", cmd_encode)
    c.add_argument("images", nargs="+", help="image files or directories")
    c.add_argument("-o", "--out", required=True, help="output .npy file")

    c = add("reconstruct", "encode and decode images on the server: PNGs and grid.png (original | reconstruction)",
            cmd_reconstruct)
    c.add_argument("images", nargs="+", help="image files or directories")
    c.add_argument("-o", "--out", required=True, help="output directory")
    add_noise_args(c)

    c = add("generate", "generate images from seeds on the server: PNGs, styles.npy, grid.png", cmd_generate)
    c.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-15 or 1,5,9 (default 0-7)")
    c.add_argument("--psi", type=float, default=None, help="truncation psi (default: the model's)")
    c.add_argument("--cutoff", type=int, default=None, help="truncation cutoff in style inputs (default: the model's)")
    c.add_argument("-o", "--out", required=True, help="output directory")
    add_noise_args(c, default="random")

    c = add("edit", "move images or latents along W-space directions on the server", cmd_edit)
    c.add_argument("inputs", nargs="+", help=sources)
    c.add_argument("--direction", action="append", required=True, metavar="NAME=STRENGTH",
                   help="NAME is one of the server's directions (client info) or a local .npy file; repeatable")
    c.add_argument("--mode", choices=["add", "set"], default="add", help="add: w + s*d; set: coordinate = s")
    c.add_argument("--layers", help="style inputs to edit, e.g. 0-7 (default: all)")
    c.add_argument("--psi", type=float, default=None, help="truncation psi for seeds: inputs")
    c.add_argument("-o", "--out", required=True, help="output directory")
    add_noise_args(c)

    c = add("mix", "style mixing on the server: coarse styles from A, the rest from B; writes a grid", cmd_mix)
    c.add_argument("--a", nargs="+", required=True, help=f"sources of the coarse styles: {sources}")
    c.add_argument("--b", nargs="+", required=True, help=f"sources of the fine styles: {sources}")
    c.add_argument("--cutoff", type=int, default=4, help="style inputs < cutoff come from A (default 4)")
    c.add_argument("--psi", type=float, default=None, help="truncation psi for seeds: sources")
    c.add_argument("-o", "--out", required=True, help="output directory")
    add_noise_args(c)
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
    from alae_rt.images import list_images, save_image

    out = out_dir(args.out)
    paths = list_images(args.images)
    with _client(args) as c:
        info = c.info()
        parts = _send_images(c, args, paths, "reconstruct",
                             lambda batch: c.reconstruct(batch, noise=args.noise, seed=args.seed).images)
    recs = [img for part in parts for img in part]
    for i, (p, img) in enumerate(zip(paths, recs)):
        save_image(img, out / f"{i:04d}_{p.stem}.png")
    _grid(_columns([[o, r] for o, r in zip(_originals(paths, info), recs)], 4), out / "grid.png", args)
    print(f"wrote {len(recs)} reconstruction(s) and grid.png (original | reconstruction) to {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from alae_rt.images import save_image

    out = out_dir(args.out)
    seeds = parse_int_list(args.seeds)
    images, styles = [], []
    with _client(args) as c:
        info = c.info()
        with progress_bar(args, len(seeds), "generate") as bar:
            for start in range(0, len(seeds), info.max_images):
                part = seeds[start:start + info.max_images]
                r = c.generate(seeds=part, psi=args.psi, cutoff=args.cutoff, noise=args.noise, seed=args.seed,
                               return_latents=True)
                images.extend(r.images)
                styles.append(r.latents)
                bar.update(len(part))
    for s, img in zip(seeds, images):
        save_image(img, out / f"seed{s:04d}.png")
    np.save(out / "styles.npy", np.concatenate(styles))
    _grid(_columns([[img] for img in images], 8), out / "grid.png", args)
    print(f"wrote {len(images)} image(s), styles.npy [N, 2L, D] and grid.png to {out}")
    return 0


def _source(args: argparse.Namespace, items: Sequence[str], info):
    """A client-side latent source: .npy latents, Seeds, or image paths -> (source, originals or None, names)."""
    from alae_rt.images import list_images
    from alae_rt.serve.client import Seeds

    if len(items) == 1 and items[0].endswith(".npy"):
        w = load_latents(items[0], info.latent_size, info.num_styles)
        return w, None, [f"{Path(items[0]).stem}_{i}" for i in range(len(w))]
    if len(items) == 1 and items[0].startswith("seeds:"):
        seeds = parse_int_list(items[0][len("seeds:"):])
        return Seeds(seeds, args.psi), None, [f"seed{s:04d}" for s in seeds]
    paths = list_images(items)
    return paths, _originals(paths, info), [f"{i:04d}_{p.stem}" for i, p in enumerate(paths)]


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
    from alae_rt.images import save_image

    out = out_dir(args.out)
    edits = [(_direction_value(n), s) for n, s in (parse_direction(d) for d in args.direction)]
    layers = parse_int_list(args.layers, "--layers") if args.layers else None
    with _client(args) as c:
        info = c.info()
        source, originals, names = _source(args, args.inputs, info)
        say(args, f"edit: {len(names)} input(s) on {args.server}")
        edited = c.edit(source, edits, mode=args.mode, layers=layers, noise=args.noise, seed=args.seed,
                        return_latents=True)
    for name, img in zip(names, edited.images):
        save_image(img, out / f"{name}.png")
    np.save(out / "edited.npy", edited.latents)
    groups = [[o, e] for o, e in zip(originals, edited.images)] if originals else [[e] for e in edited.images]
    _grid(_columns(groups, 4), out / "grid.png", args)
    cols = "original | edited" if originals else "edited"
    print(f"wrote {len(edited.images)} edited image(s), edited.npy and grid.png ({cols}) to {out}")
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    from alae_rt.images import save_image

    out = out_dir(args.out)
    with _client(args) as c:
        info = c.info()
        a, _, names_a = _source(args, args.a, info)
        b, _, names_b = _source(args, args.b, info)
        kw = {"noise": args.noise, "seed": args.seed}
        wa, images_a = _latents_and_images(c, a, kw)
        wb, images_b = _latents_and_images(c, b, kw)
        rows = [[np.full_like(images_b[0], 255), *images_b]]
        for i in range(len(names_a)):
            mixed = c.mix(wa[i:i + 1], wb, args.cutoff, **kw).images
            for nb, img in zip(names_b, mixed):
                save_image(img, out / f"mix_{names_a[i]}__{nb}.png")
            rows.append([images_a[i], *mixed])
    _grid(rows, out / "grid.png", args)
    print(f"wrote {len(names_a) * len(names_b)} mix(es) and grid.png (rows: a = styles < {args.cutoff}; "
          f"columns: b) to {out}")
    return 0


def _latents_and_images(c, src, kw: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """Latents of a source and their decoded images, so that each input is sent (and encoded) once."""
    from alae_rt.serve.client import Seeds

    if isinstance(src, Seeds):
        r = c.generate(seeds=src.seeds, psi=src.psi, return_latents=True, **kw)
        return r.latents, r.images
    w = src if isinstance(src, np.ndarray) else c.encode(src)
    return w, c.decode(w, **kw).images


def _grid(rows, path: Path, args: argparse.Namespace) -> None:
    from alae_rt.images import make_grid, save_image

    save_image(make_grid(rows), path)
    say(args, f"wrote {path}")

