"""Ray Serve (alae-rt serve --ray) against `alae-rt serve` on the same machine and model: throughput and p50/p99 of
Generate calls at several caller counts, the cost of Ray's path per call (latency at one caller, and the CPU its
proxy spends per call), and Ray's own batching (@serve.batch) against our batcher inside the replica.

    .venv/bin/python benchmarks/serve_ray.py                       # the bundled model, CPU, 1 thread per server

Each caller has its own connection and sends one seed a call (raw pixels back), so the servers' batchers merge the
calls. The servers: `alae-rt serve` in a process of its own; the Ray deployment with one replica (one server's
worth: like for like) and the same settings; a stand-in deployment that batches with @serve.batch (Generate from
seeds only, written here for the comparison: the application keeps one request path, AlaeService), and its twin
with our DynamicBatcher instead: the same request and response handling, only the batcher differs. All of them run
at once (the Ray ones as separate applications, named in the `application` metadata) and are loaded in turn, in
--rounds rounds of a shuffled order: on a shared machine the load of other work drifts by more than the
differences measured, and interleaving spreads the drift over all of them; the report gives each figure's median
over the rounds, and its range. Writes benchmarks/results/serve_ray_<cpu>_<date>_<commit>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,8,32", help="caller counts (default 1,8,32)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of load per level and round (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over every server and level (default 3)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("-o", "--out", default=str(RESULTS))
    args = p.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",")]
    return args


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def pids_named(text: str) -> list[int]:
    """Processes whose command line holds `text` (Ray names its actors' processes ray::ProxyActor, ...)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def load(address: str, app: str | None, callers: int, duration: float, watch: list[int]) -> dict:
    """`callers` threads, a connection each, calling Generate (one seed a call, RAW pixels back; the answer is not
    parsed, the same client cost for every server) for `duration` s: calls/s, latency percentiles, and the CPU
    seconds the `watch` processes spent per call."""
    import grpc

    from alae_rt.serve import alae_rt_pb2 as pb

    metadata = (("application", app),) if app else None
    channels = [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1),
                                                        ("grpc.max_receive_message_length", 64 * 2**20)])
                for _ in range(callers)]
    calls = [ch.unary_unary("/alae_rt.v1.Alae/Generate") for ch in channels]

    def request(seed: int) -> bytes:
        return pb.GenerateRequest(seeds=[seed % 1000], output=pb.OutputOptions(format=pb.IMAGE_FORMAT_RAW)) \
            .SerializeToString()

    for i, call in enumerate(calls):  # connected and warm before the clock starts
        call(request(i), timeout=120, metadata=metadata)
    latencies: list[list[float]] = [[] for _ in range(callers)]
    stop = threading.Event()
    start = threading.Barrier(callers + 1)

    def run(i: int) -> None:
        call, seed = calls[i], i
        start.wait()
        while not stop.is_set():
            t = time.perf_counter()
            call(request(seed), timeout=120, metadata=metadata)
            latencies[i].append(time.perf_counter() - t)
            seed += callers

    threads = [threading.Thread(target=run, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    cpu0 = cpu_seconds(watch)
    start.wait()
    t0 = time.perf_counter()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(watch) - cpu0
    for ch in channels:
        ch.close()
    lat = np.array([x for per in latencies for x in per]) * 1000
    return {"calls": int(lat.size), "calls_per_s": lat.size / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "proxy_cpu_ms_per_call": 1000 * cpu / max(1, lat.size)}


def start_alae_serve(args, folder: Path) -> tuple[subprocess.Popen, str]:
    port_file = folder / "port"
    log = open(folder / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "alae_rt.cli", "serve", "--port", "0", "--port-file",
                             str(port_file), "--threads", "1", "--workers", "1", "--image-workers", "1",
                             "--codec-processes", "0", "--max-batch", str(args.max_batch), "--max-delay-ms",
                             str(args.max_delay_ms), "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    while not port_file.exists() or not port_file.read_text().strip():
        assert proc.poll() is None, (folder / "serve.log").read_text()
        time.sleep(0.1)
    from alae_rt.serve.client import AlaeClient

    address = f"127.0.0.1:{port_file.read_text().strip()}"
    with AlaeClient(address, retry_s=120) as c:
        c.generate([0])  # after the warm-up
    return proc, address


def stand_in_deployments(max_batch: int, max_delay_s: float) -> dict:
    """Two Generate-only deployments over the Runtime, alike but for their batcher: @serve.batch, and our
    DynamicBatcher (the comparison's stand-ins: the same minimal request and response handling in both)."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from alae_rt.serve import alae_rt_pb2 as pb

    def generate(rt, seeds: list[int]) -> np.ndarray:
        return rt.to_uint8(rt.generate(seeds=seeds, noise="const"))  # uint8 [n, R, R, C]

    class StandIn:
        def load(self):
            import torch

            from alae_rt import Runtime

            torch.set_num_threads(1)
            self.rt = Runtime.load(device="cpu", max_batch=max_batch)

        async def Generate(self, request: bytes, grpc_context=None):  # noqa: N802
            images = await self.images([int(s) for s in pb.GenerateRequest.FromString(request).seeds])
            return pb.ImagesResponse(images=[pb.Image(raw=pb.RawImage(
                pixels=a.tobytes(), width=a.shape[1], height=a.shape[0], channels=a.shape[2])) for a in images])

    class ServeBatch(StandIn):
        def __init__(self):
            self.load()

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=max_delay_s)
        async def one(self, seeds: list[int]) -> list[np.ndarray]:
            return list(await asyncio.to_thread(generate, self.rt, seeds))

        async def images(self, seeds: list[int]) -> list[np.ndarray]:
            return await asyncio.gather(*(self.one(s) for s in seeds))

    class OurBatcher(StandIn):
        async def __init__(self):
            import torch

            from alae_rt.serve.batcher import DynamicBatcher

            self.load()
            self.batcher = DynamicBatcher(
                "decode", lambda key, inputs: torch.from_numpy(generate(self.rt, torch.cat(inputs[0]).tolist())),
                ThreadPoolExecutor(1), max_batch=max_batch, max_delay_s=max_delay_s, max_queue=1024)
            self.batcher.start()

        async def images(self, seeds: list[int]) -> list[np.ndarray]:
            import torch

            return list((await self.batcher.run("generate", [torch.tensor(seeds)])).numpy())

    opts = {"name": "Alae", "max_ongoing_requests": 4 * max_batch, "ray_actor_options": {"num_cpus": 1}}
    return {"stand-in: @serve.batch": serve.deployment(ServeBatch, **opts),
            "stand-in: our DynamicBatcher": serve.deployment(OurBatcher, **opts)}


def run_all(args, folder: Path) -> list[dict]:
    """Every server up at once, loaded in turn: --rounds rounds of a shuffled order, each server at each level."""
    import random

    import ray
    from ray import serve

    from alae_rt.serve import ray_app
    from alae_rt.serve.config import ServeConfig

    proc, direct = start_alae_serve(args, folder)
    port = ray_app.free_port()
    # logical CPUs for the three one-CPU replicas; the two real cores are shared, as by separate servers
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=100 * 2**20)
    try:
        ray_app.start_serve(port, ray_app.free_port())
        proxy = pids_named("ProxyActor")
        cfg = ServeConfig(workers=1, image_workers=1, codec_processes=0, max_delay_ms=args.max_delay_ms)
        model = ray_app.ModelSpec(device="cpu", backend="eager", max_batch=args.max_batch, threads=1)
        apps = {"ray: alae_rt.serve.ray_app": ray_app.build_app(model, cfg, ray_app.Scaling(min_replicas=1,
                                                                                             fixed=True))}
        for name, deployment in stand_in_deployments(args.max_batch, args.max_delay_ms / 1000).items():
            apps[f"ray, {name}"] = deployment.bind()
        targets = {"alae-rt serve": (direct, None, [])}
        for i, (name, app) in enumerate(apps.items()):
            serve.run(app, name=f"app{i}", route_prefix=f"/app{i}", blocking=False)
            targets[name] = (f"127.0.0.1:{port}", f"app{i}", proxy)
        while sum(a.status == "RUNNING" for a in serve.status().applications.values()) < len(apps):
            time.sleep(0.5)
        rows = []
        order = random.Random(0)
        for r in range(args.rounds):
            names = list(targets)
            order.shuffle(names)
            for name in names:
                address, app, watch = targets[name]
                for n in args.levels:
                    row = {"round": r, "server": name, "callers": n, **load(address, app, n, args.duration, watch)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        return rows
    finally:
        serve.shutdown()
        ray.shutdown()
        proc.terminate()
        proc.wait(60)


def summarise(rows: list[dict]) -> list[dict]:
    """Per server and caller count: the median of each figure over the rounds, and its range."""
    out = []
    servers = list(dict.fromkeys(r["server"] for r in rows if r["round"] == 0))
    servers.sort(key=lambda name: (name != "alae-rt serve", not name.startswith("ray:"), name))
    for key in sorted({(r["server"], r["callers"]) for r in rows}, key=lambda k: (servers.index(k[0]), k[1])):
        per = [r for r in rows if (r["server"], r["callers"]) == key]
        row = {"server": key[0], "callers": key[1], "rounds": len(per)}
        for f in ("calls_per_s", "p50_ms", "p99_ms", "proxy_cpu_ms_per_call"):
            values = [r[f] for r in per]
            row[f] = round(float(np.median(values)), 2)
            row[f + "_range"] = [round(min(values), 2), round(max(values), 2)]
        out.append(row)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import ray

    from alae_rt.bench import cpu_model, git_commit

    with tempfile.TemporaryDirectory() as tmp:
        rounds = run_all(args, Path(tmp))
    rows = summarise(rounds)
    one = {r["server"]: r for r in rows if r["callers"] == 1}
    direct, ours = one.get("alae-rt serve"), one.get("ray: alae_rt.serve.ray_app")
    info = {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "load_avg_at_end": os.getloadavg(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(), "ray": ray.__version__, "model": "bundled default (small-64), CPU, eager fp32",
            "max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms, "duration_s": args.duration,
            "rounds": args.rounds}
    summary = {"ray_path_ms_per_call_at_1_caller": round(ours["p50_ms"] - direct["p50_ms"], 2)
               if direct and ours else None,
               "proxy_cpu_ms_per_call_at_1_caller": ours["proxy_cpu_ms_per_call"] if ours else None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "-".join(info["cpu"].lower().replace("(r)", "").split()[:3])
    name = f"serve_ray_{tag}_{datetime.date.today():%Y%m%d}_{info['commit']}"
    (out / f"{name}.json").write_text(json.dumps({"machine": info, "summary": summary, "rows": rows,
                                                  "rounds": rounds}, indent=1))
    load = ", ".join(f"{x:.1f}" for x in info["load_avg_at_end"])
    lines = [f"# Ray Serve vs alae-rt serve: Generate, one seed a call, raw pixels ({info['model']})", "",
             f"{info['cpu']}, {info['cores']} cores shared with other work (load average {load} at the end), "
             f"{info['date']}, commit {info['commit']}, Ray {info['ray']}; max batch {args.max_batch}, max delay "
             f"{args.max_delay_ms:g} ms; one server process / one replica, one torch thread. Medians of "
             f"{args.rounds} interleaved rounds of {args.duration:g} s (range in brackets).", "",
             "| server | callers | calls/s | p50 ms | p99 ms | proxy CPU ms/call |", "|---|---|---|---|---|---|"]

    def cell(r: dict, f: str) -> str:
        low, high = r[f + "_range"]
        return f"{r[f]:.1f} ({low:.1f}-{high:.1f})"

    for r in rows:
        cpu = "" if r["server"] == "alae-rt serve" else cell(r, "proxy_cpu_ms_per_call")
        lines.append(f"| {r['server']} | {r['callers']} | {cell(r, 'calls_per_s')} | {cell(r, 'p50_ms')} | "
                     f"{cell(r, 'p99_ms')} | {cpu} |")
    lines += ["", f"Ray's path (proxy and the hop to the replica) adds {summary['ray_path_ms_per_call_at_1_caller']} "
              "ms a call at one caller (median p50 against alae-rt serve); the proxy alone spends "
              f"{summary['proxy_cpu_ms_per_call_at_1_caller']} CPU-ms a call."]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
