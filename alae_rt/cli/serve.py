"""`alae-rt serve`: the gRPC server (alae_rt.serve), started from the model options every command shares."""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from alae_rt.cli.options import (
    add_model_args,
    add_threads_arg,
    backend_options,
    port_number,
    positive_int,
    set_threads,
)
from alae_rt.errors import InputError

if TYPE_CHECKING:
    from alae_rt.serve.config import ServeConfig

SERVE_HELP = """\
Serve the model over gRPC (service alae_rt.v1.Alae; its .proto ships in alae_rt/serve/protos).

Requests from all callers are merged by a dynamic batcher (up to --max-batch images per forward pass,
waiting at most --max-delay-ms for a batch to fill). Health (grpc.health.v1) says NOT_SERVING while the
model warms up and while the server drains; reflection is on; Prometheus metrics are on --metrics-port.
Health also says NOT_SERVING while a queue is over half full (overloaded).
SIGTERM or Ctrl-C drains: new calls get UNAVAILABLE, calls in flight finish within --grace-s, and the
process exits within --grace-s plus a second, abandoning work still running (calls cut then get UNAVAILABLE,
over HTTP 503).
Logs are JSON lines on stderr (--log-format text for people).

With --http-port the same server also answers HTTP: a face editor at http://HOST:PORT/ (pick or upload a face,
drag attribute sliders, mix styles, interpolate, download the image and its latent) and the JSON API it uses,
POST /api/v1/{encode,decode,reconstruct,generate,edit,mix,interpolate}, GET /api/v1/{info,health}, described at
/api/openapi.json. The HTTP calls go through the same batchers, limits, metrics and bearer tokens as gRPC.
Only requests whose Host header names localhost, the --host address or an --http-allowed-hosts name are answered
(others: 421), so that no other site's page reaches the API through a name pointed at this machine.

With --ray the same gRPC service runs on Ray Serve (the ray extra): replicas that each load the model (one GPU
a replica on a cluster with GPUs, else --ray-cpus CPUs), behind Ray's gRPC proxy on --port, scaled between
--replicas MIN-MAX on calls in flight. Without --address the command starts a Ray cluster on this machine and
stops it at exit; with --address it joins a running cluster, deploys there, and deletes the deployment at exit."""


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    """Register `serve` (the CLI's EXTERNAL_COMMANDS hook: loaded only when `serve` runs)."""
    from alae_rt.serve.config import ServeConfig

    d = ServeConfig()
    p = subparsers.add_parser(name, help=help_text, description=SERVE_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_serve)
    add_model_args(p)
    m = p.add_argument_group("model (more)")
    m.add_argument("--preset", help="serve random weights of a preset instead of a checkpoint (tests, benchmarks; "
                                    "not a trained model)")
    m.add_argument("--directions-dir", metavar="DIR", action="append",
                   help="folder of W-space direction .npy files that Edit can name (official FFHQ "
                        "direction_<k>.npy also answer to smile, young, ...); its directions.json gives labels and "
                        "slider ranges; repeat to load several (alae-rt directions pca / fit write such folders)")
    add_threads_arg(m)
    n = p.add_argument_group("network")
    n.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host}; 0.0.0.0 or [::] "
                                                  "for every interface)")
    n.add_argument("--port", type=port_number, default=d.port, help=f"port (default {d.port}; 0: any free port)")
    n.add_argument("--port-file", metavar="PATH", help="write the port here once listening (useful with --port 0); "
                                                       "removed when the server exits")
    n.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain (needs --tls-key)")
    n.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    n.add_argument("--auth-token-file", metavar="PATH",
                   help="require 'authorization: Bearer <token>' with a token from this file (one a line); "
                        "health checks are exempt; others get UNAUTHENTICATED")
    h = p.add_argument_group("HTTP API and face editor (off unless --http-port)")
    h.add_argument("--http-port", type=port_number, metavar="PORT",
                   help="also serve the face editor at http://HOST:PORT/ and the HTTP API under /api/v1 on --host "
                        "(0: any free port; HTTPS with --tls-cert; --auth-token-file applies: the page asks for the "
                        "token)")
    h.add_argument("--http-port-file", metavar="PATH",
                   help="write the HTTP port here once listening (useful with --http-port 0); removed at exit")
    h.add_argument("--http-cors-origin", metavar="ORIGIN", action="append", default=[],
                   help="let pages from this origin (scheme://host[:port]) call the HTTP API from a browser; "
                        "repeat for several (default: none, CORS off)")
    h.add_argument("--http-allowed-hosts", metavar="NAME", nargs="+", action="extend", default=[],
                   help="host names the HTTP API answers to besides localhost and the --host address (a name of "
                        "this machine, or the one a reverse proxy forwards); requests naming any other host in their "
                        "Host header get 421, so that no other site's page can reach the API by pointing its own "
                        "name at this machine (DNS rebinding)")
    h.add_argument("--sample-faces", metavar="DIR",
                   help="image files (PNG, JPEG, WebP) the editor offers as sample faces: the first 64 by name, "
                        "read and checked at start; a file that is not such an image is skipped with a warning "
                        "(default: four 64x64 faces made by the bundled model, shipped with alae-rt)")
    n.add_argument("--metrics-port", type=port_number, metavar="PORT",
                   help="serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (default: off)")
    n.add_argument("--metrics-host", default=d.metrics_host, help=f"metrics address (default {d.metrics_host})")
    b = p.add_argument_group("batching and limits")
    b.add_argument("--max-batch", dest="batch_size", type=positive_int, metavar="N",
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
    b.add_argument("--max-request-pixels", type=int, default=d.max_request_pixels,
                   help="most input image pixels in one request, summed over its images and checked from their "
                        f"headers before any is decoded (default {d.max_request_pixels})")
    b.add_argument("--max-decode-pixels", type=int, default=d.max_decode_pixels,
                   help="most input image pixels being decoded at once, over all callers; callers take turns "
                        f"(default {d.max_decode_pixels})")
    b.add_argument("--max-strength", type=float, default=d.max_strength,
                   help=f"largest |strength| of an edit (default {d.max_strength:g})")
    b.add_argument("--max-steps", type=int, default=d.max_steps,
                   help=f"most frames of an Interpolate call (default {d.max_steps})")
    b.add_argument("--workers", type=int, default=d.workers,
                   help=f"threads that prepare latents and encode response images (default: the cores, {d.workers})")
    b.add_argument("--image-workers", type=int, default=d.image_workers,
                   help=f"threads that decode request images, apart from --workers (default: the cores, "
                        f"{d.image_workers})")
    b.add_argument("--codec-processes", type=int, default=d.codec_processes,
                   help="processes that encode and decode PNG (its fast codecs hold Python's GIL, so threads cannot "
                        "run them side by side); 0: in the threads above (default: the cores, "
                        f"{d.codec_processes})")
    add_connection_args(p, d)
    o = p.add_argument_group("operation")
    o.add_argument("--processes", type=positive_int, default=1, metavar="N",
                   help="server processes on the port (SO_REUSEPORT; Linux): each loads the model and batches its own "
                        "connections, for when one process's event loop is the limit (about 1,500 JPEG images/s at "
                        "one image a call on a 2-core Xeon); a connection stays with one process, so a program "
                        "needs several connections (AlaeClient objects have one each) to use several; metrics: "
                        "process i on --metrics-port + i - 1 (default 1)")
    # set by --processes for the processes it starts
    o.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    o.add_argument("--process-label", help=argparse.SUPPRESS)
    r = p.add_argument_group("Ray Serve (--ray)")
    r.add_argument("--ray", action="store_true",
                   help="serve on Ray Serve: replicas placed by Ray, restarted when they die, scaled with the load "
                        "(gRPC on --port through Ray's proxy, which listens on every interface)")
    r.add_argument("--address", metavar="ADDR",
                   help="join this running Ray cluster (ray://HOST:10001 or HOST:6379, as `ray start --head` "
                        "prints; 'auto': the one started on this machine) instead of starting one here")
    r.add_argument("--replicas", type=replica_range, metavar="N|MIN-MAX",
                   help="replicas: N exactly, or MIN-MAX scaled on calls in flight (default: 1 up to one per GPU, or "
                        "per --ray-cpus CPUs, of the cluster)")
    r.add_argument("--ray-cpus", type=float, default=1.0, metavar="N",
                   help="CPUs a replica asks Ray for, and its torch threads (default 1)")
    o.add_argument("--grace-s", type=float, default=d.grace_s,
                   help=f"on SIGTERM, how long calls in flight may take to finish (default {d.grace_s:g})")
    o.add_argument("--no-warmup", action="store_true", help="skip the warm-up forward passes at start")
    o.add_argument("--log-format", choices=["json", "text"], default="json", help="log lines (default json)")
    o.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="info logs every call; warning only failures (default info)")
    return p


# (flag, ServeConfig field, type, help) of the connection settings: idle, slow and too many connections
CONNECTION_ARGS = (
    ("--http-header-timeout-s", "http_header_timeout_s", float,
     "an HTTP request's head (request line and headers) must arrive within this many seconds of the connection's "
     "opening or of the request's first byte, else the connection is closed: sockets that send nothing, or drip "
     "their headers, do not pile up"),
    ("--http-body-timeout-s", "http_body_timeout_s", float,
     "an HTTP request's body must arrive within this many seconds of its head, else 408 and the connection closes"),
    ("--http-idle-s", "http_idle_s", float, "an idle HTTP keep-alive connection is closed after this many seconds"),
    ("--http-max-connections", "http_max_connections", int,
     "most open HTTP connections; one more gets 503 and is closed (alae_rt_http_connections_closed_total counts "
     "those and the timed-out ones)"),
    ("--grpc-handshake-timeout-s", "grpc_handshake_timeout_s", float,
     "a gRPC connection must finish its TLS and HTTP/2 handshake within this many seconds (0: gRPC's 120)"),
    ("--grpc-keepalive-s", "grpc_keepalive_s", float,
     "ping a gRPC connection that has been quiet this many seconds, to find dead peers (0: gRPC's 7200)"),
    ("--grpc-keepalive-timeout-s", "grpc_keepalive_timeout_s", float,
     "close the connection if the ping is not answered within this many seconds (0: gRPC's 20)"),
    ("--grpc-max-connection-idle-s", "grpc_max_connection_idle_s", float,
     "close (GOAWAY) a gRPC connection without a call for this many seconds; clients reconnect on their next "
     "call (0: never)"),
    ("--grpc-max-connection-age-s", "grpc_max_connection_age_s", float,
     "close (GOAWAY) every gRPC connection this many seconds old, so that behind a load balancer clients spread "
     "over new replicas (0: never)"),
    ("--grpc-max-connection-age-grace-s", "grpc_max_connection_age_grace_s", float,
     "after a max-age GOAWAY, how long calls in flight may take to finish (0: gRPC's default, forever)"),
)


def add_connection_args(p: argparse.ArgumentParser, d) -> None:
    c = p.add_argument_group("connections (idle, slow and too many)")
    for flag, field, kind, text in CONNECTION_ARGS:
        c.add_argument(flag, dest=field, type=kind, default=getattr(d, field), metavar="S" if kind is float else "N",
                       help=f"{text} (default {getattr(d, field):g})")


def connection_settings(args: argparse.Namespace) -> dict:
    """The ServeConfig fields of the connection options."""
    return {field: getattr(args, field) for _, field, _, _ in CONNECTION_ARGS}


def cmd_serve(args: argparse.Namespace) -> int:
    from alae_rt.runtime import Runtime
    from alae_rt.serve.config import ServeConfig, read_tokens
    from alae_rt.serve.logs import setup_logging
    from alae_rt.serve.server import AlaeServer, refuse_ports_in_use

    setup_logging(args.log_format, args.log_level, args.process_label)
    set_threads(args.threads)
    if args.preset and args.checkpoint:
        raise InputError("give --checkpoint or --preset, not both")
    if args.processes > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise InputError("--processes needs SO_REUSEPORT, which this system does not have")
    cfg = ServeConfig(
        host=args.host, port=args.port, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
        max_images=args.max_images, max_message_mb=args.max_message_mb, max_pixels=args.max_pixels,
        max_request_pixels=args.max_request_pixels, max_decode_pixels=args.max_decode_pixels,
        image_workers=args.image_workers, codec_processes=args.codec_processes,
        max_strength=args.max_strength, max_steps=args.max_steps, grace_s=args.grace_s,
        metrics_port=args.metrics_port, metrics_host=args.metrics_host,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None, tls_key=Path(args.tls_key) if args.tls_key else None,
        auth_tokens=read_tokens(args.auth_token_file) if args.auth_token_file else (), workers=args.workers,
        warmup=not args.no_warmup, http_port=args.http_port, http_cors_origins=tuple(args.http_cors_origin),
        http_allowed_hosts=tuple(args.http_allowed_hosts),
        sample_faces=Path(args.sample_faces) if args.sample_faces else None, reuse_port=args.reuse_port,
        **connection_settings(args))
    cfg.check(args.batch_size)
    if args.ray or args.address or args.replicas:
        return serve_on_ray(args, cfg)
    if args.processes > 1:
        from alae_rt.serve.processes import serve_processes

        if args.checkpoint and not Path(args.checkpoint).exists():  # once here, not once a process
            raise InputError(f"{args.checkpoint}: no such file")
        return serve_processes(args.command_line, args.processes, cfg.host, cfg.port, cfg.http_port,
                               cfg.metrics_port, Path(args.port_file) if args.port_file else None,
                               Path(args.http_port_file) if args.http_port_file else None, cfg.grace_s)
    refuse_ports_in_use(cfg)  # before the model loads (AlaeServer.start checks again, for callers of the API)
    if args.process_label:
        from alae_rt.serve.processes import exit_with_parent

        exit_with_parent()
    common = {"device": args.device, "dtype": args.dtype, "backend": args.backend, "max_batch": args.batch_size,
              "backend_options": backend_options(args)}
    if args.preset:
        rt = Runtime.from_config(args.preset, **common)
    else:
        rt = Runtime.load(args.checkpoint, config=args.config, trust_pickle=args.trust_pickle, **common)
    for folder in args.directions_dir or ():
        rt.load_directions(folder)
    server = AlaeServer(rt, cfg)

    port_files = [(Path(name), which) for name, which in ((args.port_file, "port"),
                                                          (args.http_port_file, "http_port")) if name]

    async def run() -> None:
        task = asyncio.get_running_loop().create_task(server.serve_until_signal())
        # the port files are written once listening, before the warm-up: health answers from then on
        while not (server.port and (cfg.http_port is None or server.http_port)) and not task.done():
            await asyncio.sleep(0.01)
        for path, which in port_files:
            if getattr(server, which):
                path.write_text(f"{getattr(server, which)}\n")
        await task

    try:
        asyncio.run(run())
    finally:
        for path, which in port_files:  # a stale port file would send clients to a closed port
            if getattr(server, which):
                path.unlink(missing_ok=True)
    server.exit_if_abandoned()  # work cut at the end of --grace-s must not hold the exit
    return 0


def replica_range(text: str) -> tuple[int, int | None, bool]:
    """--replicas N (fixed) or MIN-MAX (autoscaled) -> (min, max, fixed)."""
    low, sep, high = text.partition("-")
    try:
        values = (int(low), int(high) if sep else int(low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, e.g. 2 or 1-4, got {text!r}") from None
    if not 1 <= values[0] <= values[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return values[0], values[1], not sep


def serve_on_ray(args: argparse.Namespace, cfg: ServeConfig) -> int:
    """`alae-rt serve --ray`: the options that are `alae-rt serve`'s own front ends are refused by name."""
    from alae_rt.serve.ray_app import ModelSpec, Scaling, serve_on_ray

    own = {"--http-port": args.http_port is not None, "--processes": args.processes > 1,
           "--tls-cert": bool(args.tls_cert), "--auth-token-file": bool(args.auth_token_file),
           "--metrics-port": args.metrics_port is not None}
    given = [flag for flag, on in own.items() if on]
    if given:
        raise InputError(f"{', '.join(given)}: not with --ray (Ray Serve's proxy is the front end; its metrics are "
                         "Ray's)")
    if not args.ray:
        raise InputError("--address and --replicas are for --ray: add --ray")
    if args.port == 0:
        raise InputError("--port 0: Ray Serve's proxy needs a fixed port under --ray")
    low, high, fixed = args.replicas or (1, None, False)
    model = ModelSpec(checkpoint=args.checkpoint, preset=args.preset, config=args.config,
                      trust_pickle=args.trust_pickle, device=args.device, dtype=args.dtype, backend=args.backend,
                      max_batch=args.batch_size, backend_options=backend_options(args),
                      directions=tuple(args.directions_dir or ()), threads=args.threads)
    scaling = Scaling(min_replicas=low, max_replicas=high, fixed=fixed, cpus_per_replica=args.ray_cpus)
    return serve_on_ray(model, cfg, scaling, args.address, Path(args.port_file) if args.port_file else None)
