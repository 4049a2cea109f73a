"""A GPU-regime stand-in for the model, to measure the server itself: `python -m alae_rt.serve.simulated`.

The server runs as it always does - request rules, batching, noise maps, image decoding and encoding, gRPC - over
a Runtime whose two hot calls are replaced: encode and decode wait for a set time per batch and per image (in
`time.sleep`, which releases the GIL as a wait for a GPU does) and return fixed results: w = dlatent_avg, and a
fixed face at the configured resolution, already uint8 on the "device" (on a GPU the conversion costs next to
nothing). Everything it reports says "simulated model". benchmarks/serve_load.py --simulate-model drives it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from alae_rt.config import ModelConfig
from alae_rt.runtime import Runtime

# ffhq-1024's shape - 9 blocks, 1024x1024, D = 512 - with a handful of channels: the wire, the images and the noise
# maps are full size, the (unused) weights tiny.
SIMULATED_CONFIG = ModelConfig(9, 4, 4, 512, 2, name="simulated-1024")


class SimulatedBackend:
    """encode/decode that take `ms_per_batch + n * ms_per_image` and return fixed results."""

    def __init__(self, ms_per_image: float, ms_per_batch: float, w: Tensor, image: Tensor):
        self.name = f"simulated model ({ms_per_image:g} ms/image + {ms_per_batch:g} ms/batch)"
        self.ms_per_image, self.ms_per_batch = ms_per_image, ms_per_batch
        self.w, self.image = w, image  # [D], uint8 [R, R, C]

    def _wait(self, n: int) -> None:
        time.sleep((self.ms_per_batch + n * self.ms_per_image) / 1000)

    def encode(self, x: Tensor) -> Tensor:
        self._wait(x.shape[0])
        return self.w.expand(x.shape[0], -1).clone()  # [n, D]

    def decode_uint8(self, n: int) -> Tensor:
        self._wait(n)
        return self.image.expand(n, -1, -1, -1)  # uint8 [n, R, R, C], a view as a GPU result would be


class SimulatedRuntime(Runtime):
    """The Runtime with SimulatedBackend's encode and decode; every other step (inputs, styles, noise, edits,
    truncation, request rules) is the real one."""

    def __init__(self, ms_per_image: float, ms_per_batch: float, image: np.ndarray | None = None,
                 config: ModelConfig = SIMULATED_CONFIG, **kwargs: Any):
        from alae_rt.network import StyleALAE

        with torch.random.fork_rng():  # the same (unused) weights every time, without touching the caller's RNG
            torch.manual_seed(0)
            model = StyleALAE(config)
        super().__init__(model, source="simulated model: fixed outputs, no network", **kwargs)
        r, c = config.resolution, config.channels
        if image is None:  # a smooth colour field, so that PNG and JPEG have a photo's work to do
            y, x = np.mgrid[0:r, 0:r] / r
            image = (np.stack([np.sin(6 * x), np.cos(5 * y), np.sin(4 * (x + y))], -1)[:, :, :c] * 127 + 128)
        image = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[:r, :r, :c])
        if image.shape != (r, r, c):
            raise ValueError(f"the fixed image must be at least {r}x{r}x{c}, got {list(image.shape)}")
        self.backend = SimulatedBackend(ms_per_image, ms_per_batch, self.model.dlatent_avg[0].clone(),
                                        torch.from_numpy(image).to(self.device))

    def decode_uint8(self, w: Any, noise: Any = "random", seed: int | None = None, progress: Any = None) -> Tensor:
        styles = self.styles(w)
        self.noise(styles.shape[0], noise, seed)  # checked and made as for the real model
        return self.backend.decode_uint8(styles.shape[0])


def main(argv: list[str] | None = None) -> int:
    from alae_rt.serve.config import ServeConfig
    from alae_rt.serve.logs import setup_logging
    from alae_rt.serve.server import AlaeServer

    p = argparse.ArgumentParser(prog="python -m alae_rt.serve.simulated", description=__doc__.split("\n\n")[0])
    p.add_argument("--ms-per-image", type=float, default=0.4, help="simulated model time per image (default 0.4)")
    p.add_argument("--ms-per-batch", type=float, default=2.0, help="simulated model time per batch (default 2)")
    p.add_argument("--image", type=Path, help="a 1024x1024 image to return (default: a synthetic colour field)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", type=Path, help="write the port here once listening")
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=1024)
    p.add_argument("--max-images", type=int, default=32)
    p.add_argument("--workers", type=int, default=ServeConfig().workers)
    p.add_argument("--codec-processes", type=int, default=ServeConfig().codec_processes)
    p.add_argument("--processes", type=int, default=1,
                   help="server processes on the port, as alae-rt serve --processes (metrics: --metrics-port + i - 1)")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--process-label", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for the host-side tensor work (default 1: what runs on the GPU in the "
                        "regime simulated is not the server's to spread over its cores)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    setup_logging("text", "warning", args.process_label)
    cfg = ServeConfig(port=args.port, metrics_port=args.metrics_port, max_delay_ms=args.max_delay_ms,
                      max_queue=args.max_queue, max_images=args.max_images, workers=args.workers,
                      codec_processes=args.codec_processes, reuse_port=args.reuse_port,
                      max_message_mb=256)
    if args.processes > 1:
        from alae_rt.serve.processes import serve_processes

        return serve_processes(argv, args.processes, cfg.host, cfg.port, None, cfg.metrics_port, args.port_file,
                               None, cfg.grace_s, module="alae_rt.serve.simulated")
    if args.process_label:
        from alae_rt.serve.processes import exit_with_parent

        exit_with_parent()
    torch.set_num_threads(args.threads)
    image = None
    if args.image is not None:
        from alae_rt.images import read_image

        image = read_image(args.image)
    rt = SimulatedRuntime(args.ms_per_image, args.ms_per_batch, image, max_batch=args.max_batch)
    server = AlaeServer(rt, cfg)

    async def run() -> None:
        task = asyncio.get_running_loop().create_task(server.serve_until_signal())
        while not server.port and not task.done():
            await asyncio.sleep(0.01)
        if server.port and args.port_file:
            args.port_file.write_text(f"{server.port}\n")
        await task

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
