"""Fairness benchmark of the server: a small caller's latency while heavy callers keep the batchers full.

Starts `alae-rt serve` on 127.0.0.1 (the bundled model unless --checkpoint), times a small call (Generate of
--small seeds) alone, before and after the load, and while --heavy callers, each on its own connection, loop on
Generate of --heavy-seeds seeds, and reports the small call's median and p90 alone and under load (their ratio is
the goal: within 5x), the heavy callers' images/s and the mean decode batch:

    .venv/bin/python benchmarks/serve_fairness.py

Writes benchmarks/results/serve_fairness_<device>_<date>.json and .md, tagged with the machine, date and commit.
Every small answer under load is checked against its lone answer (within one uint8 level), so that speed is not
bought with wrong rows.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--checkpoint", help="weights (default: the bundled model)")
    p.add_argument("--heavy", type=int, default=8, help="heavy callers, a connection each (default 8)")
    p.add_argument("--heavy-seeds", type=int, default=32, help="seeds per heavy Generate (default 32)")
    p.add_argument("--small", type=int, default=1, help="seeds per small Generate (default 1)")
    p.add_argument("--calls", type=int, default=60,
                   help="small calls under load, and alone before and after it (default 60 each)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for alae-rt serve (repeatable)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--tag", help="results file stem (default serve_fairness_<device>_<date>)")
    return p.parse_args(argv)


class LocalServer:
    """`alae-rt serve` on 127.0.0.1 with ephemeral ports, for the benchmark's lifetime."""

    def __init__(self, args: argparse.Namespace):
        self.dir = tempfile.TemporaryDirectory()
        folder = Path(self.dir.name)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.metrics_port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "alae_rt.cli", "serve", "--port", "0", "--port-file", str(folder / "port"),
               "--metrics-port", str(self.metrics_port), "--max-batch", str(args.max_batch), "--log-level", "warning",
               "--max-images", str(max(args.heavy_seeds, args.small)), "--max-queue", "4096", *args.server_arg]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        self.log = open(folder / "server.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        port_file = folder / "port"
        t0 = time.monotonic()
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() - t0 > 300:
                sys.exit(f"serve_fairness: the server did not start:\n{(folder / 'server.log').read_text()}")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text().strip()}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.dir.cleanup()


def decoded(resp) -> np.ndarray:
    from alae_rt.codecs import decode_image

    return np.stack([decode_image(img.encoded) for img in resp.images]).astype(int)


async def measure(address: str, args: argparse.Namespace, batches) -> dict:
    """The small call's times alone and under load; `batches()`: the decode batcher's (images, batches) so far."""
    import grpc

    from alae_rt.serve import alae_rt_pb2 as pb
    from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc

    # A connection per caller, as separate clients have (gRPC would share one between channels otherwise).
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 256 * 2**20)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(args.heavy + 1)]
    small_stub, heavy_stubs = pb_grpc.AlaeStub(channels[0]), [pb_grpc.AlaeStub(ch) for ch in channels[1:]]
    small_req = pb.GenerateRequest(seeds=list(range(args.small)))
    for _ in range(3):  # the first calls pay for lazy set-up
        lone = await small_stub.Generate(small_req, timeout=60)
    reference = decoded(lone)

    async def small_calls() -> list[float]:
        times = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            resp = await small_stub.Generate(small_req, timeout=120)
            times.append(time.perf_counter() - t0)
            worst = int(np.abs(decoded(resp) - reference).max())
            assert worst <= 1, f"a small answer under load differs from its lone answer by {worst} levels"
        return times

    alone = await small_calls()  # and again after the load: the speed of a shared machine drifts
    stop = asyncio.Event()
    heavy_images = 0

    async def heavy(k: int) -> None:
        nonlocal heavy_images
        seeds = list(range(1000 + k * args.heavy_seeds, 1000 + (k + 1) * args.heavy_seeds))
        while not stop.is_set():
            resp = await heavy_stubs[k].Generate(pb.GenerateRequest(seeds=seeds), timeout=600)
            heavy_images += len(resp.images)

    tasks = [asyncio.ensure_future(heavy(k)) for k in range(args.heavy)]
    await asyncio.sleep(2.0)  # the heavy callers' queues fill
    t0, images0, batched0 = time.perf_counter(), heavy_images, batches()
    loaded = await small_calls()
    seconds, images, batched = time.perf_counter() - t0, heavy_images - images0, batches()
    stop.set()
    await asyncio.gather(*tasks)
    alone += await small_calls()
    for ch in channels:
        await ch.close()

    def stats(times: list[float]) -> dict:
        ms = np.array(times) * 1000
        return {"p50_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "max_ms": float(ms.max()),
                "calls": len(ms)}

    count = batched[1] - batched0[1]
    return {"alone": stats(alone), "loaded": stats(loaded), "heavy_images_per_s": images / seconds,
            "ratio_p50": float(np.median(loaded) / np.median(alone)),
            "mean_batch": (batched[0] - batched0[0]) / count if count else float("nan")}


def scrape_batches(text: str) -> tuple[float, float]:
    """The decode batcher's (images, batches) so far, from /metrics."""
    got = dict(re.findall(r'alae_rt_batch_size_(sum|count)\{op="decode"\} (\S+)', text))
    return float(got.get("sum", 0)), float(got.get("count", 0))


def markdown(report: dict) -> str:
    m, r = report["meta"], report["result"]
    lines = [f"# Serving fairness: Generate({m['small']}) beside {m['heavy']} callers looping on "
             f"Generate({m['heavy_seeds']})", "",
             f"{m['model']}; {m['device']}; {m['date']}; commit {m['commit']}; max batch {m['max_batch']}; the "
             f"machine's 1-minute load average {m['load_average_1min'][0]:g} before, {m['load_average_1min'][1]:g} "
             "after", "",
             "| small call | p50 ms | p90 ms | max ms |", "|---|---|---|---|"]
    for name in ("alone", "loaded"):
        s = r[name]
        lines.append(f"| {name} | {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | {s['max_ms']:.1f} |")
    lines += ["", f"Under load / alone (p50): **{r['ratio_p50']:.1f}x** (goal: within 5x). Heavy callers: "
              f"{r['heavy_images_per_s']:.0f} images/s; mean decode batch under load {r['mean_batch']:.2f}.",
              f"Command: `{m['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    from alae_rt.bench import cpu_model, git_commit, save_record

    args = parse_args(argv)
    load_before = os.getloadavg()[0]  # the machine's load beside ours: on a shared machine it moves the figures
    server = LocalServer(args)
    try:
        from alae_rt.serve.client import AlaeClient

        with AlaeClient(server.address, timeout=60, retry_s=300) as c:
            t0 = time.monotonic()
            while c.health() != "SERVING" and time.monotonic() - t0 < 300:  # the warm-up
                time.sleep(0.1)
            info = c.info()
        def batches() -> tuple[float, float]:
            url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            return scrape_batches(urllib.request.urlopen(url, timeout=10).read().decode())

        result = asyncio.run(measure(server.address, args, batches))
    finally:
        server.close()
    now = datetime.datetime.now(datetime.timezone.utc)
    cpu = cpu_model()
    device = f"{cpu}, {len(os.sched_getaffinity(0))} cores"
    meta = {"model": f"{info.config_name} {info.resolution}x{info.resolution} ({info.weights})", "device": device,
            "date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(), "heavy": args.heavy,
            "heavy_seeds": args.heavy_seeds, "small": args.small, "max_batch": args.max_batch,
            "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
            "python": platform.python_version(),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    report = {"meta": meta, "result": result}
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:40]
    save_record(args.out, f"serve_fairness_{slug}_{now.strftime('%Y%m%d')}", report, markdown(report), args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
