"""Load benchmark of the gRPC server: throughput, latency percentiles and batch sizes against in-process calls.

Starts `alae-rt serve` on 127.0.0.1 (or uses a running server on a loopback address), sweeps the number of
concurrent callers (1, 8, 32, 128 by default), each level bounded by a request count and a time limit, and
compares with the same Runtime called in this process at the batch size the server reached:

    .venv/bin/python benchmarks/serve_load.py --preset ffhq-1024 --op decode

Writes benchmarks/results/serve_load_<op>_<model>_<device>_<date>.json and .md, tagged with the device, date
and commit. On a CPU give --threads (the server and the baseline then use the same torch thread count; on a
busy machine more threads than free cores makes both erratic).
Goals: at 32 callers >= 90% of the in-process batched throughput; p99 at 1 caller within 15% of a
direct Runtime call.

With --simulate-model MS_PER_IMAGE[,MS_PER_BATCH] the server runs over a stand-in model
(alae_rt.serve.simulated: fixed 1024x1024 outputs after a set wait, as a GPU would give them), to measure the
server itself: images/s and the server process's CPU-ms per image for each response format (--formats: png, jpeg,
raw, latents) and for encode from PNG and JPEG files (--encode-from), at each caller count. Its results are
labelled "simulated model" and written as serve_sim_*.json/.md/.png:

    .venv/bin/python benchmarks/serve_load.py --simulate-model 0.4,2 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
OPS = ("decode", "generate", "reconstruct", "encode")
SIM_FORMATS = ("png", "jpeg", "raw", "latents")  # --simulate-model's response formats (decode)
SIM_FILES = ("png", "jpeg")  # and its encode requests' file formats
# The batcher(s) each operation goes through: the mean batch size is read from their histograms.
BATCHERS = {"decode": ("decode",), "generate": ("decode",), "reconstruct": ("encode", "decode"), "encode": ("encode",)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    m = p.add_argument_group("model (for the server started here and the in-process baseline)")
    m.add_argument("--preset", help="random weights of a preset (default small-64 when no --checkpoint)")
    m.add_argument("-c", "--checkpoint", help="weights: .safetensors or official .pth")
    m.add_argument("--device", default="auto")
    m.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    m.add_argument("--backend", default="auto")
    m.add_argument("--threads", type=int, help="torch CPU threads, for the server and the baseline alike")
    s = p.add_argument_group("server")
    s.add_argument("--server", help="a running server on a loopback address (default: start one here)")
    s.add_argument("--max-batch", type=int, default=8)
    s.add_argument("--max-delay-ms", type=float, default=5.0)
    s.add_argument("--max-queue", type=int, default=1024)
    s.add_argument("--server-processes", type=int, default=1, metavar="N",
                   help="the server started here runs as N processes on its port (alae-rt serve --processes); the "
                        "load's connections spread over them (default 1)")
    lg = p.add_argument_group("load")
    lg.add_argument("--op", choices=OPS, default="decode", help="the call made (default decode)")
    lg.add_argument("--format", choices=["raw", "png", "jpeg"], default="raw",
                    help="image format of the responses (default raw: no PNG cost in the comparison)")
    lg.add_argument("--concurrency", default="1,8,32,128", help="caller counts to sweep (default 1,8,32,128)")
    lg.add_argument("--requests", type=int, default=2000, help="most requests per level (default 2000)")
    lg.add_argument("--duration", type=float, default=60.0, help="most seconds of load per level (default 60)")
    lg.add_argument("--warmup", type=int, default=3, help="requests before each level, not counted (default 3)")
    lg.add_argument("--baseline-seconds", type=float, default=20.0,
                    help="most seconds of in-process calls after each level, at its mean batch size (default 20; "
                         "after the one-caller level: as many calls as it served, within --duration)")
    lg.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    sim = p.add_argument_group("simulated model (the server's own cost, GPU regime)")
    sim.add_argument("--simulate-model", metavar="MS[,MS_BATCH]",
                     help="serve a stand-in model taking MS per image and MS_BATCH per batch (e.g. 0.4,2: an "
                          "H100-like ffhq-1024 decode); no in-process baseline")
    sim.add_argument("--formats", default="png,jpeg,raw,latents",
                     help="response formats swept with --simulate-model (decode): png, jpeg, raw, latents")
    sim.add_argument("--encode-from", default="png,jpeg", help="input file formats of encode with --simulate-model")
    sim.add_argument("--image", help="the face the simulated model returns and encode sends (default: "
                                     "../shared/data/faces1024/00000.png when present)")
    sim.add_argument("--images-per-request", type=int, default=1,
                     help="images (latents, files) in each request (default 1): the per-call costs are shared")
    sim.add_argument("--workers", type=int, help="the server's --workers (default: its own default)")
    sim.add_argument("--codec-processes", type=int,
                     help="the server's --codec-processes (default: its own default); their CPU time is counted")
    p.add_argument("-o", "--out", default=str(RESULTS), help="results folder (default benchmarks/results)")
    p.add_argument("--tag", help="name of the results files (default serve_load_<device>_<date>)")
    args = p.parse_args(argv)
    if args.preset and args.checkpoint:
        p.error("give --preset or --checkpoint, not both")
    if args.server_processes < 1 or (args.server and args.server_processes != 1):
        p.error("--server-processes is a positive count, for the server started here (not with --server)")
    if args.simulate_model:
        try:
            ms = [float(v) for v in args.simulate_model.split(",")]
            args.ms_per_image, args.ms_per_batch = ms[0], (ms[1] if len(ms) > 1 else 0.0)
        except (ValueError, IndexError):
            p.error(f"--simulate-model {args.simulate_model!r}: expected MS or MS,MS_BATCH, e.g. 0.4,2")
        if args.server or args.preset or args.checkpoint:
            p.error("--simulate-model starts its own server: no --server, --preset or --checkpoint")
        if args.max_batch == 8:
            args.max_batch = 32
        if not 1 <= args.images_per_request <= args.max_batch:
            p.error(f"--images-per-request must be in 1..--max-batch ({args.max_batch})")
        for option, value, known in (("--formats", args.formats, SIM_FORMATS),
                                     ("--encode-from", args.encode_from, SIM_FILES)):
            wrong = [f for f in value.split(",") if f and f not in known]
            if wrong:
                p.error(f"{option} {','.join(wrong)}: expected some of {','.join(known)} (comma-separated; an empty "
                        "value runs none)")
    elif args.images_per_request != 1:
        p.error("--images-per-request is for --simulate-model (the real model's baseline is per request)")
    elif not args.preset and not args.checkpoint and not args.server:
        args.preset = "small-64"
    try:
        args.levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        p.error(f"--concurrency {args.concurrency!r}: expected caller counts, e.g. 1,8,32")
    if args.image and not Path(args.image).is_file():
        p.error(f"--image {args.image}: no such file")
    if min(args.levels) < 1 or args.requests < 1 or args.duration <= 0:
        p.error("--concurrency, --requests and --duration must be positive")
    return args


def check_loopback(address: str) -> None:
    """This benchmark sends load only to the machine it runs on."""
    host = address.rsplit(":", 1)[0].strip("[]")
    for info in socket.getaddrinfo(host, None):
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            sys.exit(f"serve_load: {address} is not a loopback address; this benchmark only loads the local machine")


# ---- the server -------------------------------------------------------------------------------------------------


class LocalServer:
    """`alae-rt serve` on 127.0.0.1, an ephemeral port and a metrics port, for the benchmark's lifetime."""

    def __init__(self, args: argparse.Namespace):
        self.dir = tempfile.TemporaryDirectory()
        port_file = Path(self.dir.name) / "port"
        self.log_path = Path(self.dir.name) / "server.log"
        self.processes = getattr(args, "server_processes", 1)
        self.metrics_port = free_port(self.processes)  # process i serves its metrics on this + i - 1
        limits = ["--port", "0", "--port-file", str(port_file), "--metrics-port", str(self.metrics_port),
                  "--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms),
                  "--max-queue", str(args.max_queue), "--max-images", str(max(args.max_batch, 1))]
        if getattr(args, "workers", None):
            limits += ["--workers", str(args.workers)]
        if getattr(args, "codec_processes", None) is not None:
            limits += ["--codec-processes", str(args.codec_processes)]
        if self.processes > 1:
            limits += ["--processes", str(self.processes)]
        if getattr(args, "simulate_model", None):
            cmd = [sys.executable, "-m", "alae_rt.serve.simulated", *limits, "--ms-per-image", str(args.ms_per_image),
                   "--ms-per-batch", str(args.ms_per_batch)]
            if args.image:
                cmd += ["--image", args.image]
        else:
            cmd = [sys.executable, "-m", "alae_rt.cli", "serve", *limits, "--log-level", "warning",
                   "--device", args.device, "--dtype", args.dtype, "--backend", args.backend]
            cmd += ["--preset", args.preset] if args.preset else ["--checkpoint", args.checkpoint]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() - t0 > 600:
                sys.exit(f"serve_load: the server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text().strip()}"

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the server process and the processes it started (its PNG codec
        processes), from Linux /proc."""
        return sum(tree_cpu(self.proc.pid).values())

    @property
    def metrics_ports(self) -> list[int]:
        return [self.metrics_port + i for i in range(self.processes)]

    def loop_seconds(self) -> float:
        """CPU time so far of the server's main thread, its event loop, which every call passes through; with
        --server-processes, of the server processes' main threads together."""
        if self.processes == 1:
            return proc_stat(Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/stat"))[1]
        return sum(proc_stat(Path(f"/proc/{pid}/task/{pid}/stat"))[1] for pid in children(self.proc.pid))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        self.dir.cleanup()


def proc_stat(path: Path) -> tuple[int, float]:
    """(parent pid, user + system CPU seconds) from a Linux /proc/.../stat file."""
    fields = path.read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def all_proc_stats() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, CPU seconds)} of every process (Linux /proc)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = proc_stat(entry / "stat")
            except OSError:  # ended meanwhile
                continue
    return stats


def children(parent: int) -> list[int]:
    return [pid for pid, (ppid, _) in all_proc_stats().items() if ppid == parent]


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds (user + system) of process `root` and its descendants, by pid (Linux /proc). A descendant that
    has ended is left out: start processes before measuring and keep them to the end (the server's do)."""
    stats = all_proc_stats()
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid][1]
            todo += [child for child, (parent, _) in stats.items() if parent == pid]
    return tree


def free_port(n: int = 1) -> int:
    """A free port on 127.0.0.1, the first of n free in a row."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            first = sock.getsockname()[1]
        if first + n <= 65536 and all(_free(port) for port in range(first + 1, first + n)):
            return first
    raise RuntimeError(f"no {n} free ports in a row on 127.0.0.1")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def scrape(ports: Sequence[int]) -> dict[str, float]:
    """Batch-size sums and counts per batcher from /metrics, summed over the server processes' ports (empty
    without one)."""
    out: dict[str, float] = {}
    for port in ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        for line in text.splitlines():
            m = re.match(r'alae_rt_batch_size_(sum|count)\{op="(\w+)"\} (\S+)', line)
            if m:
                key = f"{m.group(2)}_{m.group(1)}"
                out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def mean_batch(before: dict[str, float], after: dict[str, float], op: str) -> float | None:
    """The mean batch size of batcher `op` between two scrapes (None when it ran no batch)."""
    count = after.get(f"{op}_count", 0) - before.get(f"{op}_count", 0)
    images = after.get(f"{op}_sum", 0) - before.get(f"{op}_sum", 0)
    return images / count if count else None


def wait_serving(address: str, timeout: float, processes: int = 1):
    """Wait for the server's health to say SERVING (its warm-up done) -> its GetModelInfo. With several server
    processes on the port, each warms up on its own and a connection reaches one of them: wait until 8 x N fresh
    connections in a row find SERVING (a process still warming up is missed by all with odds (1 - 1/N)^(8N),
    under e^-8)."""
    from alae_rt.serve.client import AlaeClient, RemoteError

    t0 = time.monotonic()
    in_a_row = 0
    while in_a_row < (1 if processes == 1 else 8 * processes):
        with AlaeClient(address, timeout=10) as c:  # a connection of its own each time
            try:
                serving = c.health() == "SERVING"
            except RemoteError:  # not listening yet
                serving = False
        in_a_row = in_a_row + 1 if serving else 0
        if not serving:
            if time.monotonic() - t0 > 600:
                sys.exit(f"serve_load: the server at {address} did not become SERVING")
            time.sleep(0.1)
    with AlaeClient(address, timeout=timeout) as c:
        return c.info()


# ---- load ---------------------------------------------------------------------------------------------------------


def make_request(op: str, info, rng: np.random.Generator, fmt: str, image_file: bytes | None = None, k: int = 1):
    """One request of `op` with `k` images (distinct inputs per request; `image_file`: the same encoded file)."""
    from alae_rt.serve import alae_rt_pb2 as pb
    from alae_rt.serve.client import FORMATS, image_message
    from alae_rt.serve.wire import array_to_tensor

    if fmt == "latents":  # no image in the response: the latents that were decoded
        out = pb.OutputOptions(skip_images=True, return_latents=True)
    else:
        out = pb.OutputOptions(format=FORMATS[fmt])
    if image_file is not None:
        return "Encode", pb.EncodeRequest(images=[pb.Image(encoded=image_file)] * k)
    if op == "decode":
        w = rng.standard_normal((k, info.latent_size)).astype(np.float32)
        return "Decode", pb.DecodeRequest(latents=array_to_tensor(w), output=out)
    if op == "generate":
        return "Generate", pb.GenerateRequest(seeds=[int(rng.integers(2**31))], output=out)
    img = rng.integers(0, 256, (info.resolution, info.resolution, info.channels), dtype=np.uint8)
    if op == "reconstruct":
        return "Reconstruct", pb.ReconstructRequest(images=[image_message(img)], output=out)
    return "Encode", pb.EncodeRequest(images=[image_message(img)])


async def run_level(address: str, info, args: argparse.Namespace, concurrency: int, fmt: str | None = None,
                    image_file: bytes | None = None) -> dict:
    import grpc

    from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc

    limit = 256 * 1024 * 1024
    # A connection each (gRPC shares one between channels otherwise), as separate clients would have: with
    # --server-processes they spread over the processes.
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
               ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(min(concurrency, 8))]
    stubs = [pb_grpc.AlaeStub(ch) for ch in channels]
    rng = np.random.default_rng(concurrency)
    # Requests are built before the clock starts, so that the load generator measures the server.
    k = getattr(args, "images_per_request", 1)
    pool = [make_request(args.op, info, rng, fmt or args.format, image_file, k) for _ in range(min(args.requests, 256))]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    for i in range(args.warmup):
        method, req = pool[i % len(pool)]
        await getattr(stubs[0], method)(req, timeout=args.timeout)
    start = time.perf_counter()
    stop_at = start + args.duration

    async def worker(k: int) -> None:
        nonlocal issued
        stub = stubs[k % len(stubs)]
        while issued < args.requests and time.perf_counter() < stop_at:
            method, req = pool[issued % len(pool)]
            issued += 1
            t0 = time.perf_counter()
            try:
                await getattr(stub, method)(req, timeout=args.timeout)
            except grpc.RpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    wall = time.perf_counter() - start
    for ch in channels:
        await ch.close()
    lat = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "images": k * len(latencies), "errors": errors,
            "seconds": wall, "images_per_s": k * len(latencies) / wall,
            **{f"p{q}_ms": float(np.percentile(lat, q)) if len(lat) else None for q in (50, 90, 99)}}


# ---- the in-process baseline ------------------------------------------------------------------------------------


def load_runtime(args: argparse.Namespace, info):
    import torch

    from alae_rt import Runtime
    from alae_rt.config import ModelConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    kw = {"device": args.device, "dtype": args.dtype, "backend": args.backend, "max_batch": max(args.levels) * 2}
    if args.preset:
        return Runtime.from_config(args.preset, **kw)
    if args.checkpoint:
        return Runtime.load(args.checkpoint, **kw)
    # random weights of the server's architecture (its config itself: the name may be no preset of this version)
    return Runtime.from_config(ModelConfig.from_dict(json.loads(info.config_json)), **kw)


def direct_calls(rt, op: str, batch: int, seconds: float, max_calls: int) -> dict:
    """The op on the Runtime in this process, `batch` images a call: images/s and per-call latency."""
    import torch

    from alae_rt.images import to_uint8_tensor
    from alae_rt.streams import to_host

    cfg = rt.config
    gen = torch.Generator().manual_seed(batch)
    if op in ("decode", "generate"):
        w = torch.randn(batch, cfg.latent_size, generator=gen)
        call = (lambda: rt.decode(w, noise="const")) if op == "decode" else \
            (lambda: rt.generate(seeds=list(range(batch)), noise="const"))
    else:
        x = torch.rand(batch, cfg.channels, cfg.resolution, cfg.resolution, generator=gen) * 2 - 1
        call = (lambda: rt.reconstruct(x, noise="const")) if op == "reconstruct" else (lambda: rt.encode(x))

    def timed() -> float:
        t0 = time.perf_counter()
        out = call()
        # The server's results reach the host too, the way it sends them: images as uint8 HWC converted on the
        # device (a quarter of the float's bytes), latents as float32; through pinned memory from a GPU.
        to_host(to_uint8_tensor(out) if out.ndim == 4 else out.float())
        return time.perf_counter() - t0

    timed()  # warm-up
    times, start = [], time.perf_counter()
    while len(times) < max_calls and (time.perf_counter() - start < seconds or len(times) < 3):
        times.append(timed())
    t = np.array(times) * 1000
    return {"batch": batch, "calls": len(times), "images_per_s": batch * len(times) / (t.sum() / 1000),
            "p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99))}


# ---- report ---------------------------------------------------------------------------------------------------


def device_name(rt) -> str:
    import torch

    from alae_rt.bench import cpu_model

    if rt.device.type == "cuda":
        return torch.cuda.get_device_name(rt.device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def _fmt(v, f: str = "{:.1f}") -> str:
    return "-" if v is None else f.format(v)


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [f"# Serving load: {m['op']} on {m['model']}", "",
             f"{m['device']} · {m['date']} · commit {m['commit']} · {m['dtype']} · backend {m['backend']} · "
             f"format {m['format']} · max batch {m['max_batch']}, max delay {m['max_delay_ms']} ms", "",
             "| callers | requests | images/s | p50 ms | p90 ms | p99 ms | mean batch | in-process images/s "
             "(same batch) | served / in-process |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["levels"]:
        base = r.get("baseline") or {}
        ratio = r["images_per_s"] / base["images_per_s"] if base.get("images_per_s") else None
        lines.append(f"| {r['concurrency']} | {r['requests']} | {_fmt(r['images_per_s'])} | {_fmt(r['p50_ms'])} | "
                     f"{_fmt(r['p90_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r.get('mean_batch'), '{:.2f}')} | "
                     f"{_fmt(base.get('images_per_s'))} (batch {base.get('batch', '-')}) | "
                     f"{_fmt(ratio, '{:.0%}')} |")
    g = report["goals"]
    lines += ["", f"Goals: at 32 callers >= 90% of in-process batched throughput: {g['throughput_32']}; "
                  f"p99 at 1 caller within 15% of a direct call: {g['p99_1']}.",
              "", f"Command: `{m['command']}`"]
    if m["gflop_per_image"]:
        lines.append(f"Work: {m['gflop_per_image']:.2f} GFLOP per image; best served rate "
                     f"{max(r['images_per_s'] for r in report['levels']) * m['gflop_per_image']:.1f} GFLOP/s.")
    return "\n".join(lines) + "\n"


# ---- the simulated model: the server's own cost ----------------------------------------------------------------


def simulated_face(args: argparse.Namespace) -> np.ndarray:
    """The 1024x1024 face the simulated model returns and encode sends: --image, a sample face, or a synthetic one."""
    from alae_rt.images import read_image

    path = Path(args.image) if args.image else ROOT.parent / "shared" / "data" / "faces1024" / "00000.png"
    if path.is_file():
        args.image = str(path)
        return read_image(path)
    args.image = None
    y, x = np.mgrid[0:1024, 0:1024] / 1024
    return (np.stack([np.sin(6 * x), np.cos(5 * y), np.sin(4 * (x + y))], -1) * 127 + 128).astype(np.uint8)


def simulated_sweep(args: argparse.Namespace, on_row: Callable[[list[dict]], None] | None = None) -> dict:
    """Every case (decode to each format, encode from each file format) at every caller count, against one server
    over the simulated model: images/s, latency, mean batch and the server process's CPU-ms per image. on_row gets
    the rows so far after each one (a run cut off keeps them)."""
    from alae_rt import codecs

    face = simulated_face(args)
    files = {"png": codecs.encode_png(face), "jpeg": codecs.encode_jpeg(face)}
    cases = [("decode", f) for f in args.formats.split(",") if f] + \
            [("encode", f) for f in args.encode_from.split(",") if f]
    server = LocalServer(args)
    rows = []
    try:
        info = wait_serving(server.address, args.timeout, server.processes)
        for op, fmt in cases:
            args.op = op
            for n in args.levels:
                before, cpu0, loop0 = scrape(server.metrics_ports), server.cpu_seconds(), server.loop_seconds()
                r = asyncio.run(run_level(server.address, info, args, n, fmt=fmt if op == "decode" else "raw",
                                          image_file=files[fmt] if op == "encode" else None))
                cpu, loop = server.cpu_seconds() - cpu0, server.loop_seconds() - loop0
                after = scrape(server.metrics_ports)
                r.update(case=f"{op} {'to' if op == 'decode' else 'from'} {fmt}", op=op, format=fmt,
                         mean_batch=mean_batch(before, after, op),
                         server_cpu_ms_per_image=1000 * cpu / max(r["images"], 1),
                         loop_cpu_ms_per_image=1000 * loop / max(r["images"], 1))
                b = r["mean_batch"] or 1
                r["model_capacity_images_per_s"] = 1000 * b / (args.ms_per_batch + b * args.ms_per_image)
                rows.append(r)
                if on_row is not None:
                    on_row(rows)
                print(f"{r['case']:18s} {n:4d} callers: {r['images_per_s']:8.1f} images/s, server CPU "
                      f"{r['server_cpu_ms_per_image']:.2f} ms/image, mean batch {b:.1f}, p50 {r['p50_ms']:.1f} ms",
                      file=sys.stderr)
    finally:
        server.close()
    return {"info": {"config": info.config_name, "resolution": info.resolution, "backend": info.backend}, "rows": rows}


def prep_ms_per_image(face: np.ndarray, batch: int, repeats: int = 5) -> float:
    """The server's input preparation of one request image on a CPU device, one thread: uint8 [R, R, C] -> float
    [C, R, R] in [-1, 1] (alae_rt.images.image_to_tensor) and its share of a batch's concatenation; median ms."""
    import torch

    from alae_rt.images import image_to_tensor

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r, c = face.shape[0], face.shape[2]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            xs = [image_to_tensor(face, r, c)[None] for _ in range(batch)]
            torch.cat(xs)
            times.append((time.perf_counter() - t0) / batch)
        return 1000 * float(np.median(times))
    finally:
        torch.set_num_threads(before)


def simulated_markdown(report: dict) -> str:
    m = report["meta"]
    levels = sorted({r["concurrency"] for r in report["rows"]})
    cases = list(dict.fromkeys(r["case"] for r in report["rows"]))
    by = {(r["case"], r["concurrency"]): r for r in report["rows"]}
    lines = [f"# Serving with a SIMULATED MODEL ({m['ms_per_image']:g} ms/image + {m['ms_per_batch']:g} ms/batch), "
             f"{m['resolution']}x{m['resolution']}", "",
             f"{m['machine']} · {m['date']} · commit {m['commit']} · server "
             f"{'--processes ' + str(m['server_processes']) + ' ' if m.get('server_processes', 1) > 1 else ''}"
             f"--workers {m['workers']} --codec-processes {m.get('codec_processes', 0)} · max batch "
             f"{m['max_batch']} · {m.get('images_per_request', 1)} image(s) per request · codecs {m['codecs']}", "",
             "The model is a stand-in (alae_rt.serve.simulated) that returns a fixed face after the set wait, as a "
             "GPU would: these figures are the server's own cost (gRPC, request handling, noise maps, image "
             "decode/encode), not a model's. The load generator runs on the same cores.", "",
             "images/s (server CPU-ms per image):", "",
             "| case | " + " | ".join(f"{n} callers" for n in levels) + " |",
             "|---|" + "---:|" * len(levels)]
    for case in cases:
        cells = []
        for n in levels:
            r = by.get((case, n))
            cells.append("-" if r is None else f"{r['images_per_s']:.0f} ({r['server_cpu_ms_per_image']:.1f} ms)")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    if all("loop_cpu_ms_per_image" in r for r in report["rows"]):
        k = m.get("server_processes", 1)
        lines += ["", "Event-loop CPU-ms per image: the server's one thread that every call passes through (gRPC's "
                      "transport, the calls' coroutines). A server process cannot serve more than 1000 / this "
                      "images/s, however many cores it has" +
                      (f"; the {k} processes' loops together, so the server's ceiling is {k} x 1000 / this." if k > 1
                       else "."), "",
                  "| case | " + " | ".join(f"{n} callers" for n in levels) + " | ceiling at the most callers |",
                  "|---|" + "---:|" * (len(levels) + 1)]
        for case in cases:
            cells = [f"{by[(case, n)]['loop_cpu_ms_per_image']:.2f}" if (case, n) in by else "-" for n in levels]
            last = by.get((case, levels[-1]))
            ceiling = (f"{k * 1000 / last['loop_cpu_ms_per_image']:.0f}/s" if last and last["loop_cpu_ms_per_image"]
                       else "-")
            lines.append(f"| {case} | " + " | ".join(cells) + f" | {ceiling} |")
    prep = m.get("prep_ms_per_image")
    lines += ["", "Cores per GPU to keep up with 2,500 images/s (server CPU-ms per image x 2.5, at the most callers "
                  "measured): " + ", ".join(f"{case} {by[(case, levels[-1])]['server_cpu_ms_per_image'] * 2.5:.1f}"
                                            for case in cases if (case, levels[-1]) in by) + "."]
    if prep is not None and any(case.startswith("encode") for case in cases):
        host = {case.split()[-1]: max(by[(case, levels[-1])]["server_cpu_ms_per_image"] - prep, 0) * 2.5
                for case in cases if case.startswith("encode") and (case, levels[-1]) in by}
        lines += ["", f"Encode includes the input preparation (uint8 -> float in [-1, 1], batch concatenation), which "
                      f"runs on the model's device: here the simulated device is this CPU, {prep:.1f} ms per image on "
                      "one thread (measured in-process with the same face); on a GPU host it is the GPU's work. "
                      "Without it, encode from " + ", ".join(f"{k} {v:.1f}" for k, v in host.items()) +
                      " cores per GPU."]
    lines += ["", f"Command: `{m['command']}`"]
    return "\n".join(lines) + "\n"


def simulated_plot(report: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    m = report["meta"]
    cases = list(dict.fromkeys(r["case"] for r in report["rows"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for case in cases:
        rs = [r for r in report["rows"] if r["case"] == case]
        ax1.plot([r["concurrency"] for r in rs], [r["images_per_s"] for r in rs], marker="o", label=case)
        ax2.plot([r["concurrency"] for r in rs], [r["server_cpu_ms_per_image"] for r in rs], marker="o", label=case)
    for ax, title in ((ax1, "images/s served"), (ax2, "server CPU-ms per image")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent callers")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    processes = m.get("server_processes", 1)
    fig.suptitle(f"SIMULATED MODEL ({m['ms_per_image']:g} ms/image + {m['ms_per_batch']:g} ms/batch), "
                 f"{m['resolution']}x{m['resolution']}, {m.get('images_per_request', 1)} image(s) per request"
                 f"{f', {processes} server processes' if processes > 1 else ''} · "
                 f"{m['machine']} · {m['date']} · {m['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main_simulated(args: argparse.Namespace, argv) -> int:
    from alae_rt import codecs
    from alae_rt.bench import cpu_model, git_commit, unused_stem
    from alae_rt.serve.config import ServeConfig

    now = datetime.datetime.now(datetime.timezone.utc)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or unused_stem(out, f"serve_sim_{args.ms_per_image:g}ms_{now.strftime('%Y%m%d')}")
    meta = {"simulated_model": True, "ms_per_image": args.ms_per_image, "ms_per_batch": args.ms_per_batch,
            "machine": f"{cpu_model()}, {os.cpu_count()} cores",
            "date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
            "workers": args.workers or ServeConfig().workers, "max_batch": args.max_batch,
            "images_per_request": args.images_per_request, "server_processes": args.server_processes,
            "codec_processes": ServeConfig().codec_processes if args.codec_processes is None else args.codec_processes,
            "max_delay_ms": args.max_delay_ms, "image": Path(args.image).name if args.image else "synthetic",
            "codecs": ", ".join(k for k, v in codecs.fast_codecs().items() if v) or "Pillow only",
            "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv)}

    def keep(rows: list[dict]) -> None:  # the rows so far, marked partial: what a run cut off short leaves
        (out / f"{tag}.json").write_text(json.dumps({"meta": {**meta, "partial": True}, "rows": rows}, indent=2))

    result = simulated_sweep(args, keep)
    meta.update(resolution=result["info"]["resolution"],
                prep_ms_per_image=round(prep_ms_per_image(simulated_face(args), args.max_batch), 2))
    report = {"meta": meta, "rows": result["rows"]}
    (out / f"{tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{tag}.md").write_text(simulated_markdown(report))
    plot = simulated_plot(report, out / f"{tag}.png")
    print(simulated_markdown(report))
    print(f"wrote {out / tag}.json, .md{' and .png' if plot else ''}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.simulate_model:
        return main_simulated(args, argv)
    from alae_rt.bench import git_commit, save_record
    from alae_rt.flops import count_flops

    server = None
    if args.server:
        check_loopback(args.server)
        address, metrics_ports = args.server, []
    else:
        server = LocalServer(args)
        address = server.address
    try:
        info = wait_serving(address, args.timeout, server.processes if server is not None else 1)
        if server is not None:
            metrics_ports = server.metrics_ports
        # Each level's in-process baseline runs right after the level, with the server idle: the speed of a
        # shared machine drifts over minutes, and figures taken far apart would measure the drift. The Runtime
        # runs in one worker thread, as the server runs its model (CPU thread pools behave differently off the
        # main thread).
        with ThreadPoolExecutor(1) as worker:
            rt = worker.submit(load_runtime, args, info).result()
            levels = []
            for n in args.levels:
                before = scrape(metrics_ports)
                result = asyncio.run(run_level(address, info, args, n))
                after = scrape(metrics_ports)
                op = BATCHERS[args.op][-1]
                result["mean_batch"] = mean_batch(before, after, op)
                batch = max(1, min(args.max_batch, round(result["mean_batch"] or 1)))
                # At one caller the p99s are compared: the direct calls then match the served ones in number.
                seconds, calls = ((args.duration, result["requests"]) if n == 1
                                  else (args.baseline_seconds, args.requests))
                result["baseline"] = worker.submit(direct_calls, rt, args.op, batch, seconds, max(calls, 3)).result()
                levels.append(result)
                print(f"{n:4d} callers: {result['requests']} requests, {result['images_per_s']:.2f} images/s, "
                      f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, mean batch "
                      f"{result['mean_batch'] or float('nan'):.2f}; in-process at batch {batch}: "
                      f"{result['baseline']['images_per_s']:.2f} images/s", file=sys.stderr)
    finally:
        if server is not None:
            server.close()
    by_n = {r["concurrency"]: r for r in levels}
    direct1 = by_n[1]["baseline"] if 1 in by_n else None  # the direct calls beside the one-caller level
    goals = {
        "throughput_32": ("n/a" if 32 not in by_n else
                          f"{by_n[32]['images_per_s'] / by_n[32]['baseline']['images_per_s']:.0%}"),
        "p99_1": ("n/a" if 1 not in by_n else f"served {by_n[1]['p99_ms']:.1f} ms vs direct {direct1['p99_ms']:.1f} ms"
                  f" ({by_n[1]['p99_ms'] / direct1['p99_ms'] - 1:+.0%})"),
    }
    flops = count_flops(rt.config, rt.method)
    per_image = {"decode": flops["decode"], "generate": flops["decode"] + flops.get("map", 0),
                 "encode": flops["encode"], "reconstruct": flops["encode"] + flops["decode"]}[args.op] / 1e9
    now = datetime.datetime.now(datetime.timezone.utc)
    meta = {"op": args.op, "model": f"{info.config_name} {info.resolution}x{info.resolution} ({info.weights})",
            "device": device_name(rt), "date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
            "dtype": info.dtype, "backend": info.backend, "format": args.format, "max_batch": args.max_batch,
            "max_delay_ms": args.max_delay_ms, "torch_threads": args.threads, "gflop_per_image": per_image,
            "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
            "python": platform.python_version()}
    report = {"meta": meta, "levels": levels, "direct_batch1": direct1, "goals": goals}
    slug = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")[:40]
    save_record(args.out, f"serve_load_{args.op}_{info.config_name}_{slug}_{now.strftime('%Y%m%d')}", report,
                 markdown(report), args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
