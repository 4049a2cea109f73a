"""The gRPC server: the alae_rt.v1.Alae service over one Runtime, with batching, health, metrics, auth and TLS."""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import math
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from torch import Tensor

from alae_rt.errors import AlaeError, InputError
from alae_rt.images import image_to_tensor, to_uint8
from alae_rt.runtime import Runtime
from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc
from alae_rt.serve.batcher import BatchStats, Dropped, DynamicBatcher, QueueFull
from alae_rt.serve.metrics import Metrics
from alae_rt.serve.wire import (
    RequestError,
    array_to_image,
    array_to_tensor,
    check_latents,
    image_to_array,
    invalid,
    over_limit,
)
from alae_rt.serve.wire import tensor_to_array as _tensor_to_array

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Alae"].full_name  # "alae_rt.v1.Alae"
HEALTH_EXEMPT = "/grpc.health.v1.Health/"  # load balancers probe health without credentials
PSI_RANGE = (-2.0, 2.0)
MAX_EDITS = 64  # directions per Edit call
log = logging.getLogger("alae_rt.serve")


@dataclass(frozen=True)
class ServeConfig:
    """The server's settings; `alae-rt serve --help` explains each. The batch limit is the Runtime's max_batch."""

    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (AlaeServer.port tells which)
    max_delay_ms: float = 5.0
    max_queue: int = 256  # images waiting per batcher
    max_images: int = 32  # images, seeds or latents per request
    max_message_mb: float = 64.0
    max_pixels: int = 4096 * 4096  # per input image, checked from its header before decoding
    max_strength: float = 100.0
    max_steps: int = 256
    grace_s: float = 30.0
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    metrics_host: str = "127.0.0.1"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_tokens: tuple[str, ...] = ()
    workers: int = 2  # threads that decode/encode image files and prepare latents
    warmup: bool = True

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)

    def check(self, max_batch: int) -> None:
        if self.max_images < 1 or self.max_queue < 1 or self.max_steps < 2 or self.workers < 1:
            raise AlaeError("--max-images, --max-queue and --workers must be >= 1, --max-steps >= 2")
        if self.max_queue < self.max_images:
            raise AlaeError(f"--max-queue ({self.max_queue}) must be >= --max-images ({self.max_images}), or a "
                            "full-size request could never be queued")
        if self.max_delay_ms < 0 or self.grace_s < 0 or self.max_strength <= 0 or self.max_pixels < 1:
            raise AlaeError("--max-delay-ms and --grace-s must be >= 0; --max-strength and --max-pixels > 0")
        if not 0 < self.max_message_mb <= 2047:
            raise AlaeError(f"--max-message-mb must be in (0, 2047], got {self.max_message_mb}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise AlaeError("TLS needs both --tls-cert and --tls-key")
        if max_batch < 1:
            raise AlaeError("--max-batch must be >= 1")


def read_tokens(path: str | Path) -> tuple[str, ...]:
    """Bearer tokens from a file, one a line (several allow rotation); blank lines and # comments are skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise AlaeError(f"{path}: cannot read the auth token file ({exc.strerror or exc})") from None
    tokens = tuple(t.strip() for t in lines if t.strip() and not t.strip().startswith("#"))
    if not tokens:
        raise AlaeError(f"{path}: the auth token file holds no token")
    if any(len(t) < 16 for t in tokens):
        raise AlaeError(f"{path}: a token is shorter than 16 characters; use a long random one")
    return tokens


# ---- the service --------------------------------------------------------------------------------------------


class AlaeService(pb_grpc.AlaeServicer):
    """The RPCs. Model work runs in one compute thread through two batchers (encode, decode); image files and
    latents are prepared in a small thread pool, so the event loop only moves messages."""

    def __init__(self, rt: Runtime, cfg: ServeConfig, metrics: Metrics, compute: ThreadPoolExecutor,
                 pool: ThreadPoolExecutor):
        self.rt = rt
        self.cfg = cfg
        self.metrics = metrics
        self.compute = compute
        self.pool = pool
        self.state = "warming"  # -> "serving" -> "draining"
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        common = {"max_batch": rt.max_batch, "max_delay_s": cfg.max_delay_ms / 1000, "max_queue": cfg.max_queue,
                  "may_grow": self._others_in_flight}
        self.encoder = DynamicBatcher("encode", self._encode_batch, compute, stats=self._stats("encode"), **common)
        self.decoder = DynamicBatcher("decode", self._decode_batch, compute, stats=self._stats("decode"), **common)

    def _others_in_flight(self) -> bool:
        """Whether some call in flight is outside both batchers (being prepared, or just arrived): it may join."""
        return self.inflight > self.encoder.requests + self.decoder.requests

    def _stats(self, op: str) -> BatchStats:
        m = self.metrics
        return BatchStats(on_batch=lambda n, s: m.observe_batch(op, n, s),
                          on_drop=lambda reason, n: m.dropped.labels(op, reason).inc(n),
                          on_depth=lambda n: m.queue_depth.labels(op).set(n))

    # ---- compute (the compute thread) ------------------------------------------------------------------------
    def _encode_batch(self, key, inputs: list[list[Tensor | None]]) -> Tensor:
        x = torch.cat(inputs[0])  # [B, C, R, R]
        return self.rt.encode(x).float().cpu()  # [B, D]

    def _decode_batch(self, key, inputs: list[list[Tensor | None]]) -> Tensor:
        styles = torch.cat(inputs[0])  # [B, 2L, D]
        _, with_noise = key
        noise = [torch.cat(parts) for parts in inputs[1:]] if with_noise else "none"  # 2L x [B, 1, h, w]
        return self.rt.decode(styles, noise=noise).float().cpu()  # [B, C, R, R]

    def warm_up(self) -> None:
        """Run encode and decode batches through the batchers' own compute functions, with inputs built as a
        merged batch builds them (dtype, device, per-row noise maps), so that lazy initialisation and
        compilation are not paid by a caller. Compiled backends see batches of 1, 2 and max_batch: a compiler
        specialises on 1, then goes dynamic. Decodes warm up with noise maps (every mode but NOISE_MODE_NONE
        sends them); a NOISE_MODE_NONE call is compiled when it first comes."""
        c, r = self.rt.config.channels, self.rt.config.resolution
        sizes = [1] if self.rt.backend.name == "eager" else sorted({1, min(2, self.rt.max_batch), self.rt.max_batch})
        const = pb.Noise(mode=pb.NOISE_MODE_CONST)
        for n in sizes:
            x = torch.zeros(n, c, r, r, device=self.rt.device, dtype=self.rt.dtype)  # as _images_to_tensor
            w = self._encode_batch("encode", [[x]])  # [n, D]
            maps = self._noise_maps(n, const, None)  # 2L x [n, 1, h, w]
            styles = self.rt.styles(w)  # [n, 2L, D], from CPU float32 rows as a request's latents are
            self._decode_batch(("decode", True), [[styles], *[[m] for m in maps]])

    async def start(self) -> None:
        self.encoder.start()
        self.decoder.start()

    async def close(self) -> None:
        await self.encoder.close()
        await self.decoder.close()

    # ---- helpers ----------------------------------------------------------------------------------------------
    async def _in_pool(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    @staticmethod
    def _deadline(context) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else asyncio.get_running_loop().time() + remaining

    def _check_count(self, n: int, field: str, what: str = "images") -> None:
        if n == 0:
            raise invalid(field, "empty batch")
        if n > self.cfg.max_images:
            raise over_limit(field, f"{n} {what}; this server takes at most {self.cfg.max_images} per request "
                                    "(--max-images)")

    def _tensor(self, t: pb.Tensor, field: str, styles: bool = True) -> Tensor:
        arr = _tensor_to_array(t, field)
        check_latents(arr, field, self.rt.config.latent_size, self.rt.config.num_styles, styles)
        self._check_count(arr.shape[0], f"{field}.shape", "latents")
        return torch.from_numpy(arr).to(self.rt.device, self.rt.dtype)

    def _images_to_tensor(self, images: Sequence[pb.Image], field: str) -> Tensor:
        c, r = self.rt.config.channels, self.rt.config.resolution
        xs = []
        for i, img in enumerate(images):
            arr = image_to_array(img, f"{field}[{i}]", self.cfg.max_pixels)  # [H, W, C]
            try:
                xs.append(image_to_tensor(arr, r, c, name=f"{field}[{i}]"))  # [C, R, R]
            except InputError as exc:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return torch.stack(xs).to(self.rt.device, self.rt.dtype)  # [n, C, R, R]

    async def _encode(self, images: Sequence[pb.Image], field: str, deadline: float | None) -> Tensor:
        """Image messages -> w [n, D] through the encode batcher."""
        self._check_count(len(images), field)
        x = await self._in_pool(self._images_to_tensor, list(images), field)
        return await self.encoder.run("encode", [x], deadline)

    def _check_psi(self, psi: float, field: str) -> float:
        if not (math.isfinite(psi) and PSI_RANGE[0] <= psi <= PSI_RANGE[1]):
            raise invalid(field, f"{psi} is out of range [{PSI_RANGE[0]}, {PSI_RANGE[1]}]")
        return float(psi)

    def _seed_styles(self, seeds: Sequence[int], psi: float | None, cutoff: int | None = None) -> Tensor:
        """z from each seed -> F -> truncation -> styles [n, 2L, D] (Runtime.generate's path)."""
        return self.rt.truncate(self.rt.map(self.rt.seeds_to_z(seeds)), psi, cutoff)

    async def _source(self, src: pb.LatentSource, field: str, deadline: float | None) -> Tensor:
        """A LatentSource -> w [n, D] or styles [n, 2L, D]."""
        given = [k for k, present in (("images", len(src.images) > 0), ("latents", src.HasField("latents")),
                                      ("seeds", len(src.seeds) > 0)) if present]
        if len(given) != 1:
            what = "nothing" if not given else " and ".join(given)
            raise invalid(field, f"give exactly one of images, latents or seeds (got {what})")
        if src.HasField("truncation_psi") and given[0] != "seeds":
            raise invalid(f"{field}.truncation_psi", "only applies to seeds")
        if given[0] == "images":
            return await self._encode(src.images, f"{field}.images", deadline)
        if given[0] == "latents":
            return await self._in_pool(self._tensor, src.latents, f"{field}.latents")
        self._check_count(len(src.seeds), f"{field}.seeds", "seeds")
        psi = self._check_psi(src.truncation_psi, f"{field}.truncation_psi") if src.HasField("truncation_psi") else None
        return await self._in_pool(self._seed_styles, list(src.seeds), psi)

    def _check_noise(self, noise: pb.Noise) -> None:
        if noise.mode not in pb.NoiseMode.values():
            raise invalid("noise.mode", f"unknown mode {noise.mode}")
        if noise.HasField("seed") and noise.mode != pb.NOISE_MODE_RANDOM:
            raise invalid("noise.seed", "only applies to NOISE_MODE_RANDOM")

    def _check_output(self, out: pb.OutputOptions) -> None:
        if out.format not in pb.ImageFormat.values():
            raise invalid("output.format", f"unknown format {out.format}")
        if out.jpeg_quality > 100:
            raise invalid("output.jpeg_quality", f"{out.jpeg_quality} is out of range 1..100 (0: 90)")
        if out.skip_images and not out.return_latents:
            raise invalid("output.skip_images", "needs return_latents (the response would be empty)")

    def _noise_maps(self, n: int, noise: pb.Noise, seeds: Sequence[int] | None) -> list[Tensor] | None:
        """This request's own 2L noise maps, each [n, 1, h, w], so that merging it with others changes nothing."""
        if noise.mode == pb.NOISE_MODE_NONE:
            return None
        if noise.mode == pb.NOISE_MODE_RANDOM:
            if noise.HasField("seed"):
                maps = self.rt.noise(n, "random", seed=noise.seed)
            elif seeds is not None:
                maps = self.rt.seed_noise(seeds)  # each seed's own stream, as Runtime.generate does
            else:
                maps = self.rt.noise(n, "random")
        else:
            maps = self.rt.noise(n, "const")
        # Block 0's first map has batch 1 (shared by the request's images): give every row its copy (a view).
        return [m.expand(n, -1, -1, -1) for m in maps]

    async def _decode(self, latents: Tensor, noise: pb.Noise, deadline: float | None,
                      seeds: Sequence[int] | None = None) -> Tensor:
        """w [n, D] or styles [n, 2L, D] -> images float [n, C, R, R] on the CPU, through the decode batcher."""
        n = latents.shape[0]
        maps = await self._in_pool(self._noise_maps, n, noise, seeds)
        styles = self.rt.styles(latents)  # [n, 2L, D] (a view for w)
        inputs = [styles] if maps is None else [styles, *maps]
        return await self.decoder.run(("decode", maps is not None), inputs, deadline)

    def _images_out(self, images: Tensor, out: pb.OutputOptions) -> list[pb.Image]:
        return [array_to_image(a, out.format, out.jpeg_quality) for a in to_uint8(images)]

    async def _respond(self, images: Tensor | None, latents: Tensor | None, out: pb.OutputOptions,
                       message=pb.ImagesResponse, **fields: Any):
        resp = message(**fields)
        if images is not None and not out.skip_images:
            resp.images.extend(await self._in_pool(self._images_out, images, out))
        if out.return_latents and latents is not None:
            resp.latents.CopyFrom(array_to_tensor(latents.float().cpu().numpy()))
        size = resp.ByteSize()
        if size > self.cfg.max_message_bytes:
            raise over_limit("output", f"the response would be {size / 2**20:.1f} MiB, over this server's "
                                       f"{self.cfg.max_message_mb:g} MiB (--max-message-mb); ask for fewer "
                                       "images, or PNG/JPEG instead of RAW")
        return resp

    # ---- the RPCs -----------------------------------------------------------------------------------------------
    async def _encode_rpc(self, req: pb.EncodeRequest, context) -> pb.EncodeResponse:
        w = await self._encode(req.images, "images", self._deadline(context))
        return pb.EncodeResponse(latents=array_to_tensor(w.numpy()))

    async def _decode_rpc(self, req: pb.DecodeRequest, context) -> pb.ImagesResponse:
        self._check_noise(req.noise)
        self._check_output(req.output)
        if not req.HasField("latents"):
            raise invalid("latents", "missing")
        w = await self._in_pool(self._tensor, req.latents, "latents")
        return await self._respond(await self._decode(w, req.noise, self._deadline(context)), w, req.output)

    async def _reconstruct_rpc(self, req: pb.ReconstructRequest, context) -> pb.ImagesResponse:
        self._check_noise(req.noise)
        self._check_output(req.output)
        deadline = self._deadline(context)
        w = await self._encode(req.images, "images", deadline)
        return await self._respond(await self._decode(w, req.noise, deadline), w, req.output)

    async def _generate_rpc(self, req: pb.GenerateRequest, context) -> pb.ImagesResponse:
        self._check_noise(req.noise)
        self._check_output(req.output)
        if (len(req.seeds) > 0) == req.HasField("z"):
            raise invalid("seeds", "give exactly one of seeds and z")
        psi = self._check_psi(req.truncation_psi, "truncation_psi") if req.HasField("truncation_psi") else None
        cutoff = None
        if req.HasField("truncation_cutoff"):
            cutoff = req.truncation_cutoff
            if cutoff > self.rt.config.num_styles:
                raise invalid("truncation_cutoff", f"{cutoff} is out of range 0..{self.rt.config.num_styles}")
        seeds = None
        if req.seeds:
            self._check_count(len(req.seeds), "seeds", "seeds")
            seeds = list(req.seeds)
            styles = await self._in_pool(self._seed_styles, seeds, psi, cutoff)
        else:
            z = await self._in_pool(self._tensor, req.z, "z", styles=False)
            styles = await self._in_pool(lambda: self.rt.truncate(self.rt.map(z), psi, cutoff))
        images = await self._decode(styles, req.noise, self._deadline(context), seeds=seeds)
        return await self._respond(images, styles, req.output)

    def _edits(self, req: pb.EditRequest) -> tuple[list[tuple[Any, float]], str, list[int] | None]:
        if not req.edits:
            raise invalid("edits", "no edits given")
        if len(req.edits) > MAX_EDITS:
            raise invalid("edits", f"{len(req.edits)} edits; at most {MAX_EDITS} per request")
        if len(req.layers) > self.rt.config.num_styles:
            raise invalid("layers", f"{len(req.layers)} entries; there are {self.rt.config.num_styles} style inputs")
        modes = {pb.EDIT_MODE_UNSPECIFIED: "add", pb.EDIT_MODE_ADD: "add", pb.EDIT_MODE_SET: "set"}
        if req.mode not in modes:
            raise invalid("mode", f"unknown edit mode {req.mode}")
        d, s, limit = self.rt.config.latent_size, self.rt.config.num_styles, self.cfg.max_strength
        edits: list[tuple[Any, float]] = []
        for i, e in enumerate(req.edits):
            f = f"edits[{i}]"
            which = e.WhichOneof("direction")
            if which == "name":
                if e.name not in self.rt.directions:
                    known = ", ".join(sorted(self.rt.directions)) or "none: the server was started without directions"
                    raise invalid(f"{f}.name", f"unknown direction {e.name!r}; known: {known}")
                key: Any = e.name
            elif which == "vector":
                arr = _tensor_to_array(e.vector, f"{f}.vector")
                if arr.shape not in ((d,), (s, d)):
                    raise invalid(f"{f}.vector.shape", f"{list(arr.shape)}; expected [{d}] or [{s}, {d}]")
                if modes[req.mode] == "set" and not (arr * arr).sum(-1).all():
                    raise invalid(f"{f}.vector", "is zero; EDIT_MODE_SET needs a non-zero direction")
                key = torch.from_numpy(arr)
            else:
                raise invalid(f, "no direction (set name or vector)")
            if not (math.isfinite(e.strength) and abs(e.strength) <= limit):
                raise invalid(f"{f}.strength", f"{e.strength} is out of range [-{limit:g}, {limit:g}]")
            edits.append((key, float(e.strength)))
        for i, layer in enumerate(req.layers):
            if layer >= s:
                raise invalid(f"layers[{i}]", f"{layer} is out of range 0..{s - 1}")
        return edits, modes[req.mode], list(req.layers) or None

    async def _edit_rpc(self, req: pb.EditRequest, context) -> pb.ImagesResponse:
        self._check_noise(req.noise)
        self._check_output(req.output)
        edits, mode, layers = self._edits(req)
        deadline = self._deadline(context)
        w = await self._source(req.source, "source", deadline)
        edited = await self._in_pool(self.rt.edit, w, edits, mode=mode, layers=layers)
        return await self._respond(await self._decode(edited, req.noise, deadline), edited, req.output)

    async def _pair(self, a_src: pb.LatentSource, b_src: pb.LatentSource, deadline) -> tuple[Tensor, Tensor]:
        if not a_src.ByteSize() and not b_src.ByteSize():
            raise invalid("a", "missing (and so is b)")
        a = await self._source(a_src, "a", deadline)
        b = await self._source(b_src, "b", deadline)
        if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
            raise invalid("b", f"batch size {b.shape[0]} differs from a's {a.shape[0]} (and neither is 1)")
        self._check_count(max(a.shape[0], b.shape[0]), "b")
        return a, b

    async def _mix_rpc(self, req: pb.MixRequest, context) -> pb.ImagesResponse:
        self._check_noise(req.noise)
        self._check_output(req.output)
        if req.cutoff > self.rt.config.num_styles:
            raise invalid("cutoff", f"{req.cutoff} is out of range 0..{self.rt.config.num_styles}")
        deadline = self._deadline(context)
        a, b = await self._pair(req.a, req.b, deadline)
        styles = await self._in_pool(self.rt.mix_styles, a, b, req.cutoff)  # [n, 2L, D]
        return await self._respond(await self._decode(styles, req.noise, deadline), styles, req.output)

    async def _interpolate_rpc(self, req: pb.InterpolateRequest, context):
        self._check_noise(req.noise)
        self._check_output(req.output)
        if not 2 <= req.steps <= self.cfg.max_steps:
            raise invalid("steps", f"{req.steps} is out of range 2..{self.cfg.max_steps}")
        deadline = self._deadline(context)
        a, b = await self._pair(req.a, req.b, deadline)
        if a.shape != b.shape:  # mixed w / styles, or a batch of 1 against n: both as styles [n, 2L, D]
            n = max(a.shape[0], b.shape[0])
            a, b = (self.rt.styles(t).expand(n, -1, -1) for t in (a, b))
        path = await self._in_pool(self.rt.interpolate, a, b, req.steps)  # [steps, n, ...]
        n = path.shape[1]
        # One set of noise maps for every frame, so that only the latent moves.
        maps = await self._in_pool(self._noise_maps, n, req.noise, None)
        for i in range(req.steps):
            inputs = [self.rt.styles(path[i])] + ([] if maps is None else maps)
            images = await self.decoder.run(("decode", maps is not None), inputs, deadline)
            yield await self._respond(images, path[i], req.output, message=pb.InterpolateFrame, index=i,
                                      t=i / (req.steps - 1))

    async def _info_rpc(self, req: pb.GetModelInfoRequest, context) -> pb.ModelInfo:
        from alae_rt import __version__

        rt, c = self.rt, self.rt.config
        return pb.ModelInfo(
            config_name=c.name, config_json=c.to_json(), resolution=c.resolution, channels=c.channels,
            latent_size=c.latent_size, layer_count=c.layer_count, num_styles=c.num_styles,
            directions=sorted(rt.directions), backend=rt.backend.name, device=str(rt.device),
            dtype=str(rt.dtype).replace("torch.", ""), weights=rt.source, truncation_psi=c.truncation_psi,
            truncation_cutoff=c.truncation_cutoff, max_batch=rt.max_batch, max_images=self.cfg.max_images,
            max_message_bytes=self.cfg.max_message_bytes, max_pixels=self.cfg.max_pixels,
            max_strength=self.cfg.max_strength, max_steps=self.cfg.max_steps, version=__version__)

    # ---- status codes, metrics and logs around every RPC ------------------------------------------------------
    def _status_of(self, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        if isinstance(exc, RequestError):
            return exc.code, exc.message
        if isinstance(exc, InputError):
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        if isinstance(exc, QueueFull):
            return grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry later (--max-queue)"
        if isinstance(exc, Dropped):
            return grpc.StatusCode.DEADLINE_EXCEEDED, f"dropped before compute: {exc}"
        if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc)):
            return grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory on the server; send fewer images per request"
        log.error("internal error", exc_info=exc, extra={"fields": {"event": "internal_error"}})
        return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the server log has the details"

    def _begin(self, method: str, context, needs_model: bool) -> None:
        if needs_model and self.state != "serving":
            why = "warming up" if self.state == "warming" else "shutting down"
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"the server is {why}; retry shortly")
        self.inflight += 1
        self._idle.clear()
        self.metrics.inflight.set(self.inflight)

    def _end(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.set(self.inflight)
        if self.inflight == 0:
            self._idle.set()

    def _finish(self, method: str, code: grpc.StatusCode, started: float, context, images: int,
                message: str = "") -> None:
        seconds = time.perf_counter() - started
        self.metrics.requests.labels(method, code.name).inc()
        self.metrics.latency.labels(method).observe(seconds)
        fields = {"event": "rpc", "method": method, "code": code.name, "ms": round(seconds * 1000, 2),
                  "images": images, "peer": context.peer()}
        if message:
            fields["error"] = message
        log.log(logging.INFO if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED) else logging.WARNING,
                "rpc", extra={"fields": fields})

    async def _unary(self, method: str, handler, req, context, needs_model: bool = True):
        started = time.perf_counter()
        try:
            self._begin(method, context, needs_model)
        except RequestError as exc:
            self._finish(method, exc.code, started, context, 0, exc.message)
            await context.abort(exc.code, exc.message)
        try:
            resp = await handler(req, context)
        except asyncio.CancelledError:
            self._finish(method, grpc.StatusCode.CANCELLED, started, context, 0)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a traceback to the caller
            code, message = self._status_of(exc)
        else:
            self._finish(method, grpc.StatusCode.OK, started, context, _count(resp))
            return resp
        finally:
            self._end()
        self._finish(method, code, started, context, 0, message)
        await context.abort(code, message)

    async def Encode(self, request, context):
        return await self._unary("Encode", self._encode_rpc, request, context)

    async def Decode(self, request, context):
        return await self._unary("Decode", self._decode_rpc, request, context)

    async def Reconstruct(self, request, context):
        return await self._unary("Reconstruct", self._reconstruct_rpc, request, context)

    async def Generate(self, request, context):
        return await self._unary("Generate", self._generate_rpc, request, context)

    async def Edit(self, request, context):
        return await self._unary("Edit", self._edit_rpc, request, context)

    async def Mix(self, request, context):
        return await self._unary("Mix", self._mix_rpc, request, context)

    async def GetModelInfo(self, request, context):
        return await self._unary("GetModelInfo", self._info_rpc, request, context, needs_model=False)

    async def Interpolate(self, request, context):
        method, started, frames = "Interpolate", time.perf_counter(), 0
        try:
            self._begin(method, context, True)
        except RequestError as exc:
            self._finish(method, exc.code, started, context, 0, exc.message)
            await context.abort(exc.code, exc.message)
        try:
            async for frame in self._interpolate_rpc(request, context):
                frames += 1
                yield frame
        except asyncio.CancelledError:
            self._finish(method, grpc.StatusCode.CANCELLED, started, context, frames)
            raise
        except Exception as exc:  # noqa: BLE001
            code, message = self._status_of(exc)
        else:
            self._finish(method, grpc.StatusCode.OK, started, context, frames)
            return
        finally:
            self._end()
        self._finish(method, code, started, context, frames, message)
        await context.abort(code, message)


# ---- auth -----------------------------------------------------------------------------------------------------


class BearerAuth(grpc.aio.ServerInterceptor):
    """Lets a call through only with `authorization: Bearer <token>` for one of the tokens (health is exempt)."""

    def __init__(self, tokens: Sequence[str], on_reject: Callable[[str], None] | None = None):
        self._tokens = [t.encode() for t in tokens]
        self._on_reject = on_reject

    def _ok(self, metadata) -> bool:
        value = next((v for k, v in metadata or () if k == "authorization"), "")
        scheme, _, token = (value if isinstance(value, str) else value.decode(errors="replace")).partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        # compare_digest against every token: the time taken does not tell which one (or how much) matched
        return any([hmac.compare_digest(given, t) for t in self._tokens])

    async def intercept_service(self, continuation, details):
        if details.method.startswith(HEALTH_EXEMPT) or self._ok(details.invocation_metadata):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None
        if self._on_reject:
            self._on_reject(details.method)
        message = "missing or invalid bearer token (send metadata 'authorization: Bearer <token>')"

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def deny_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # an async generator, like the streaming handler it stands in for

        kinds = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        make = kinds[(handler.request_streaming, handler.response_streaming)]
        return make(deny_stream if handler.response_streaming else deny,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)


# ---- the server -------------------------------------------------------------------------------------------------


@dataclass
class _Listening:
    port: int = 0
    metrics_port: int | None = None


class AlaeServer:
    """A grpc.aio server for one Runtime: start(), wait_ready(), then drain() (what SIGTERM does) or stop().

    The executors exist from construction, so a caller can see them (tests hold the compute thread to make
    queues fill deterministically).
    """

    def __init__(self, rt: Runtime, cfg: ServeConfig | None = None):
        self.rt = rt
        self.cfg = cfg or ServeConfig()
        self.cfg.check(rt.max_batch)
        self.metrics = Metrics()
        self.compute = ThreadPoolExecutor(1, thread_name_prefix="alae-compute")  # one Runtime, one device
        self.pool = ThreadPoolExecutor(self.cfg.workers, thread_name_prefix="alae-prep")
        self.service: AlaeService | None = None
        self.health: HealthServicer | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_server = None
        self._warm_task: asyncio.Task | None = None
        self._stopped: asyncio.Event | None = None
        self.listening = _Listening()

    @property
    def port(self) -> int:
        return self.listening.port

    @property
    def metrics_port(self) -> int | None:
        return self.listening.metrics_port

    @property
    def address(self) -> str:
        return f"{self.cfg.host}:{self.port}"

    async def start(self) -> None:
        """Listen (health says NOT_SERVING), then warm up in the background (health then says SERVING)."""
        cfg = self.cfg
        self._stopped = asyncio.Event()  # made here: it belongs to the loop that runs the server
        self.service = AlaeService(self.rt, cfg, self.metrics, self.compute, self.pool)
        interceptors = []
        if cfg.auth_tokens:
            reject = self.metrics.requests.labels
            interceptors.append(BearerAuth(cfg.auth_tokens, on_reject=lambda m: reject(
                m.rsplit("/", 1)[-1], "UNAUTHENTICATED").inc()))
        limit = cfg.max_message_bytes
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                   ("grpc.so_reuseport", 0)]
        self._server = server = grpc.aio.server(interceptors=interceptors, options=options)
        pb_grpc.add_AlaeServicer_to_server(self.service, server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server)
        address = f"{cfg.host}:{cfg.port}"
        try:
            if cfg.tls_cert is not None:
                pair = (_read(cfg.tls_key, "--tls-key"), _read(cfg.tls_cert, "--tls-cert"))
                creds = grpc.ssl_server_credentials([pair])
                port = server.add_secure_port(address, creds)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise AlaeError(f"cannot listen on {address}: {exc} (is the port in use?)") from None
        if port == 0:
            raise AlaeError(f"cannot listen on {address} (is the port in use?)")
        self.listening.port = port
        await server.start()
        await self.service.start()
        if cfg.metrics_port is not None:
            from prometheus_client import start_http_server

            try:
                self._metrics_server, _ = start_http_server(cfg.metrics_port, cfg.metrics_host, self.metrics.registry)
            except OSError as exc:
                await self.stop()
                raise AlaeError(f"cannot serve metrics on {cfg.metrics_host}:{cfg.metrics_port}: "
                                f"{exc.strerror or exc}") from None
            self.listening.metrics_port = self._metrics_server.server_port
        log.info("listening", extra={"fields": {
            "event": "listening", "address": f"{cfg.host}:{port}", "tls": cfg.tls_cert is not None,
            "auth": bool(cfg.auth_tokens), "metrics_port": self.listening.metrics_port, "model": repr(self.rt),
            "weights": self.rt.source, "max_batch": self.rt.max_batch, "max_delay_ms": cfg.max_delay_ms}})
        self._warm_task = asyncio.get_running_loop().create_task(self._warm_up())

    async def _warm_up(self) -> None:
        started = time.perf_counter()
        if self.cfg.warmup:
            await asyncio.get_running_loop().run_in_executor(self.compute, self.service.warm_up)
        if self.service.state == "warming":
            self.service.state = "serving"
            for name in ("", SERVICE_NAME):
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
            log.info("serving", extra={"fields": {"event": "serving",
                                                  "warmup_s": round(time.perf_counter() - started, 3)}})

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for the warm-up; it raises what the warm-up raised."""
        await asyncio.wait_for(asyncio.shield(self._warm_task), timeout)

    async def drain(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING, new calls UNAVAILABLE, in-flight calls finish (within grace_s)."""
        if self._server is None or self._stopped.is_set():
            return
        grace = self.cfg.grace_s if grace_s is None else grace_s
        service = self.service
        service.state = "draining"
        await self.health.enter_graceful_shutdown()
        log.info("draining", extra={"fields": {"event": "draining", "inflight": service.inflight, "grace_s": grace}})
        try:
            await asyncio.wait_for(service._idle.wait(), grace)
        except asyncio.TimeoutError:
            log.warning("grace period over", extra={"fields": {"event": "grace_over", "cut": service.inflight}})
        await self._shutdown()

    async def stop(self) -> None:
        """Stop now: calls still running are cancelled."""
        if self._server is not None and not self._stopped.is_set():
            self.service.state = "draining"
            await self._shutdown()

    async def _shutdown(self) -> None:
        await self._server.stop(0)
        if self._warm_task is not None and not self._warm_task.done():
            self._warm_task.cancel()
        await self.service.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.compute.shutdown(wait=False, cancel_futures=True)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        log.info("stopped", extra={"fields": {"event": "stopped"}})

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def serve_until_signal(self) -> None:
        """start(), then run until SIGTERM or SIGINT and drain; a second signal stops at once."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        await self.start()
        got = asyncio.Event()

        def on_signal(sig: signal.Signals) -> None:
            if got.is_set():
                log.warning("second signal: stopping now", extra={"fields": {"event": "signal", "signal": sig.name}})
                loop.create_task(self.stop())
            else:
                log.info("signal", extra={"fields": {"event": "signal", "signal": sig.name}})
                got.set()

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            stop_wait = loop.create_task(self._stopped.wait())
            sig_wait = loop.create_task(got.wait())
            await asyncio.wait([self._warm_task, sig_wait], return_when=asyncio.FIRST_COMPLETED)
            if self._warm_task.done() and self._warm_task.exception() is not None:
                await self.stop()
                raise self._warm_task.exception()
            await asyncio.wait([stop_wait, sig_wait], return_when=asyncio.FIRST_COMPLETED)
            if not self._stopped.is_set():
                await self.drain()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)


def _count(resp: Any) -> int:
    """Images (or latents) in a response, for the access log."""
    images = len(getattr(resp, "images", ()))
    latents = getattr(resp, "latents", None)
    return images or (latents.shape[0] if latents is not None and len(latents.shape) else 0)


def _read(path: Path | None, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AlaeError(f"{path}: cannot read {flag} ({exc.strerror or exc})") from None


# ---- structured logs -------------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, msg and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`time level msg key=value ...` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items() if k != "event")
        text = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname.lower():7s} " \
               f"{record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(fmt: str = "json", level: str = "info") -> None:
    """Logs of alae_rt.serve to stderr, as JSON lines or text."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger("alae_rt.serve")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False

