"""The alae_rt.v1.Alae RPCs over one Runtime: an image-decoding stage, two batchers (encode, decode), and one wrapper
around every call for its status code, metrics and access log."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import torch
from torch import Tensor

from alae_rt import nvjpeg
from alae_rt.cli.grids import file_names_only, psnr
from alae_rt.codecs import DEFAULT_JPEG_QUALITY
from alae_rt.directions import DEFAULT_RANGE
from alae_rt.errors import InputError
from alae_rt.runtime import Runtime
from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc
from alae_rt.serve.auth import token_index
from alae_rt.serve.batcher import BatchStats, Dropped, DynamicBatcher, QueueFull
from alae_rt.serve.codec_processes import CodecProcesses
from alae_rt.serve.config import ServeConfig
from alae_rt.serve.decoding import DecodeStage, StageStats
from alae_rt.serve.logs import LineLimit, log
from alae_rt.serve.metrics import Metrics
from alae_rt.serve.requests import (
    PAIR_FIELDS,
    BadMessage,
    check_count,
    check_output,
    check_steps,
    edit_args,
    generation_args,
    image_sizes,
    image_tensor,
    images_tensor,
    latents_tensor,
    noise_args,
    request_error,
    runtime_fields,
    source_fields,
    source_kind,
    tolerant_parser,
)
from alae_rt.serve.wire import (
    RequestError,
    Serialized,
    array_to_tensor,
    encoded_parts,
    frame_response,
    image_parts,
    invalid,
    serialize,
)
from alae_rt.streams import HIGH_PRIORITY, device_stream, to_host

# Latents of at most this many bytes (32 w of 512) are checked on the event loop: a hop to the worker pool and back
# costs more than the check (~0.1 ms of CPU against a few microseconds).
INLINE_BYTES = 64 * 1024
# A response with no encoding to do (latents, or RAW pixels up to this many bytes: two 1024x1024 images) is framed on
# the event loop when no other call is in flight: the hop to the pool and back cost a lone caller ~0.3 ms of CPU a
# call (two thread wake-ups), more than the framing's copy. Under load, and for PNG/JPEG, the pool frames it.
INLINE_RESPONSE_BYTES = 8 * 2**20
# gRPC receives a message in many small slices, and the C allocator keeps their pages once they are freed: after a
# refused request of this many bytes the server gives them back to the system (release_memory), so that an attack
# of refused 60 MB calls leaves no more resident than one call's.
RELEASE_BYTES = 16 * 2**20
RELEASE_DELAY_S = 0.05  # after the refused call has ended and gRPC has freed its message


@dataclass
class CallContext:
    """A call's transport for a front end other than gRPC (the HTTP API, alae_rt.serve.http_api): what the RPCs use
    of gRPC's ServicerContext - who calls, how much time is left. A refused call raises its RequestError whole
    (gRPC's context takes only the code and message; the HTTP status depends on more, e.g. 413 or 429)."""

    caller: str  # as gRPC names peers ("ipv4:127.0.0.1:5000"): image decoding and the batchers take callers in turn
    timeout_s: float | None = None
    authorization: str = ""  # the Authorization header: with --auth-token-file, callers are told apart by token
    started: float = field(default_factory=time.monotonic)

    def peer(self) -> str:
        return self.caller

    def time_remaining(self) -> float | None:
        return None if self.timeout_s is None else max(0.0, self.timeout_s - (time.monotonic() - self.started))


@dataclass
class Call:
    """One RPC in flight, as its wrapper sees it: what it returned, for the access log."""

    method: str
    peer: str  # the caller's connection, for the log
    started: float
    deadline: float | None = None  # loop time
    images: int = 0  # images (or latents, or frames) answered
    wire: bool = True  # responses go out in wire form (gRPC); False: as messages (a CallContext's front end)
    # who takes turns at image decoding and the batchers: the connection, or with auth the token it presented (one
    # client cannot take more turns by opening more connections)
    caller: str = ""

    def done(self, resp: Any) -> Any:
        """Count the images (or latents) of a unary response, and return it."""
        if isinstance(resp, Serialized):
            self.images = resp.images
            return resp
        latents = getattr(resp, "latents", None)
        self.images = len(getattr(resp, "images", ())) or (
            latents.shape[0] if latents is not None and len(latents.shape) else 0)
        return resp


class AlaeService(pb_grpc.AlaeServicer):
    """The RPCs. Model work runs in one compute thread through two batchers (encode, decode). Request images are
    decoded in their own pool through a DecodeStage (a pixel budget, callers in turn, stopped for a caller who has
    gone); latents, noise and response images are prepared in another small pool, which image decoding never
    occupies. The event loop only moves messages."""

    def __init__(self, rt: Runtime, cfg: ServeConfig, metrics: Metrics, compute: ThreadPoolExecutor,
                 pool: ThreadPoolExecutor, image_pool: ThreadPoolExecutor, codec: CodecProcesses | None = None):
        self.rt = rt
        self.cfg = cfg
        self.metrics = metrics
        self.compute = compute
        self.pool = pool
        self.codec = codec or CodecProcesses(0, 1)  # PNG in worker processes, or (0) in the calling thread
        m = metrics
        self.images = DecodeStage(image_pool, workers=cfg.image_workers, max_pixels=cfg.max_decode_pixels,
                                  max_waiting=cfg.max_queue, stats=StageStats(
                                      on_pixels=lambda run, wait: (m.decode_pixels.labels("running").set(run),
                                                                   m.decode_pixels.labels("waiting").set(wait)),
                                      on_drop=lambda reason, n: m.dropped.labels("image", reason).inc(n),
                                      on_done=m.decoded.inc))
        self.state = "warming"  # -> "serving" -> "draining"
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._release: asyncio.TimerHandle | None = None  # a release_memory to come (_release_later)
        self._tokens = [t.encode() for t in cfg.auth_tokens]
        self.error_lines = LineLimit()
        common = {"max_batch": rt.max_batch, "max_delay_s": cfg.max_delay_ms / 1000, "max_queue": cfg.max_queue,
                  "may_grow": self._others_in_flight}
        self.encode_batcher = DynamicBatcher("encode", self._encode_batch, compute, stats=self._stats("encode"),
                                             **common)
        self.decode_batcher = DynamicBatcher("decode", self._decode_batch, compute, stats=self._stats("decode"),
                                             **common)

    def overloaded(self) -> bool:
        """Whether a stage's queue is over its threshold (health then says NOT_SERVING, for a load balancer)."""
        cfg, images = self.cfg, self.images
        return (images.waiting >= cfg.overload_images or images.waiting_pixels >= cfg.overload_pixels
                or max(self.encode_batcher.queued, self.decode_batcher.queued) >= cfg.overload_images)

    def _others_in_flight(self) -> bool:
        """Whether some call in flight is outside both batchers (being prepared, or just arrived): it may join."""
        return self.inflight > self.encode_batcher.requests + self.decode_batcher.requests

    def _stats(self, op: str) -> BatchStats:
        m = self.metrics
        return BatchStats(on_batch=lambda n, s: m.observe_batch(op, n, s),
                          on_drop=lambda reason, n: m.dropped.labels(op, reason).inc(n),
                          on_depth=lambda n: m.queue_depth.labels(op).set(n))

    # ---- compute (the compute thread) ------------------------------------------------------------------------
    # A batch runs on the compute thread's own stream and is complete when its function returns (device_stream), so
    # that responses are copied and encoded on other streams while the next batch computes. Its inputs were made
    # complete on other threads' streams, and the batcher holds them until the function returns: no record_stream.
    def _encode_batch(self, key, inputs: list[list[Tensor | None]]) -> Tensor:
        with device_stream(self.rt.device, HIGH_PRIORITY):
            x = inputs[0][0] if len(inputs[0]) == 1 else torch.cat(inputs[0])  # [B, C, R, R]; one request: no copy
            return self.rt.encode(x)  # [B, D], on the model's device: w goes on to the decoder from there

    def _decode_batch(self, key, inputs: list[list[Tensor | None]]) -> Tensor:
        with device_stream(self.rt.device, HIGH_PRIORITY):
            latents = torch.cat(inputs[0])  # [B, D] (key: 2) or [B, 2L, D] (3): the batcher keeps the two apart
            # w is broadcast to the 2L style inputs here, once a batch, not on the event loop once a call;
            # contiguous, as a concatenation of styles is, so that compiled code sees one kind of input
            styles = self.rt.styles(latents).contiguous() if latents.ndim == 2 else latents
            _, kind, _ = key  # "maps": each row brings its own; "const" and "none": the Runtime's, shared by all rows
            noise = [torch.cat(parts) for parts in inputs[1:]] if kind == "maps" else kind  # 2L x [B, 1, h, w]
            return self.rt.decode_uint8(styles, noise=noise)  # uint8 [B, R, R, C] on the model's device

    def warm_up(self) -> None:
        """Run encode and decode batches through the batchers' own compute functions, with inputs built as a
        merged batch builds them (dtype, device, noise maps), so that lazy initialisation and compilation are not
        paid by a caller. Compiled backends see batches of 1, 2 and max_batch: a compiler specialises on 1, then
        goes dynamic. Decodes warm up with the constant maps (NOISE_MODE_CONST, the default) and with per-row maps
        (random noise); a NOISE_MODE_NONE call is compiled when it first comes."""
        c, r = self.rt.config.channels, self.rt.config.resolution
        sizes = [1] if self.rt.backend.name == "eager" else sorted({1, min(2, self.rt.max_batch), self.rt.max_batch})
        with device_stream(self.rt.device, HIGH_PRIORITY):  # the batches' own stream: the inputs are made there too
            for n in sizes:
                x = torch.zeros(n, c, r, r, device=self.rt.device, dtype=self.rt.dtype)  # as images_tensor makes
                w = self._encode_batch("encode", [[x]])  # [n, D]
                self._decode_batch(("decode", "const", 2), [[w]])  # w from the encoder's rows, as a request's is
                maps = [m.expand(n, -1, -1, -1) for m in self.rt.noise(n, "const")]  # 2L x [n, 1, h, w], as random
                self._decode_batch(("decode", "maps", 3), [[self.rt.styles(w)], *[[m] for m in maps]])

    async def start(self) -> None:
        self.encode_batcher.start()
        self.decode_batcher.start()

    async def close(self) -> None:
        if self._release is not None:
            self._release.cancel()
        await self.encode_batcher.close()
        await self.decode_batcher.close()

    # ---- steps of a request ---------------------------------------------------------------------------------
    async def _in_pool(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """fn in the worker pool, on its thread's own CUDA stream: what it returns is complete (device_stream)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(self._on_stream, fn, *args, **kwargs))

    def _on_stream(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        with device_stream(self.rt.device):
            return fn(*args, **kwargs)

    @staticmethod
    def _host_latents(t: Tensor) -> np.ndarray:
        """Latents on the model's device -> float32 [n, ...] on the host (small: on the calling thread)."""
        with device_stream(t.device):
            return to_host(t.float()).numpy()

    @staticmethod
    def _deadline(context) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else asyncio.get_running_loop().time() + remaining

    async def _latents(self, t: pb.Tensor, field: str, allow_styles: bool = True) -> Tensor:
        # checked and moved to the device at once: a hop to the pool costs more. (ByteSize, not len(t.data): every
        # read of a bytes field copies it, and a 60 MB one would be copied on the event loop.)
        if t.ByteSize() <= INLINE_BYTES:
            return latents_tensor(t, field, self.rt, self.cfg, allow_styles)
        return await self._in_pool(latents_tensor, t, field, self.rt, self.cfg, allow_styles)

    async def _encode(self, images: Sequence[pb.Image], field: str, call: Call) -> Tensor:
        """Image messages -> w [n, D] through the decode stage and the encode batcher."""
        x = await self._inputs(images, field, call)
        return await self.encode_batcher.run("encode", [x], call.deadline, call.caller)

    async def _inputs(self, images: Sequence[pb.Image], field: str, call: Call) -> Tensor:
        """Image messages -> the encoder's input [n, C, R, R] through the decode stage: sizes from the headers
        first, then each image in turn with other callers'."""
        check_count(len(images), field, self.cfg)
        images, stage, rt, cfg = list(images), self.images, self.rt, self.cfg
        (sizes,) = await stage.run(call.caller, [(0, functools.partial(image_sizes, images, field, cfg))],
                                   call.deadline, field)
        jobs = [(pixels, functools.partial(image_tensor, img, f"{field}[{i}]", rt, cfg, self.codec.decode))
                for i, (img, pixels) in enumerate(zip(images, sizes))]
        xs = await stage.run(call.caller, jobs, call.deadline, field)  # n x [C, R, R]
        (x,) = await stage.run(call.caller, [(0, functools.partial(images_tensor, xs, rt))], call.deadline, field)
        return x

    async def _source(self, src: pb.LatentSource, field: str, call: Call) -> Tensor:
        """A LatentSource -> w [n, D] or styles [n, 2L, D]."""
        kind = source_kind(src, field)
        if kind == "images":
            return await self._encode(src.images, f"{field}.images", call)
        if kind == "latents":
            return await self._latents(src.latents, f"{field}.latents")
        check_count(len(src.seeds), f"{field}.seeds", self.cfg, "seeds")
        psi = src.truncation_psi if src.HasField("truncation_psi") else None
        with runtime_fields(source_fields(field)):
            return await self._in_pool(self.rt.seed_styles, list(src.seeds), psi)

    def _noise_maps(self, n: int, mode: str, seed: int | None,
                    seeds: Sequence[int] | None = None) -> tuple[str, list[Tensor] | None]:
        """(kind, maps) for a request of n rows. Random noise: the request's own 2L maps, each [n, 1, h, w], so that
        merging it with others changes nothing. Constant noise and none are the same for every request: no maps
        travel (the batch uses the Runtime's constant maps, one [1, 1, h, w] each, instead of a copy per row -
        11 MB a row at 1024x1024)."""
        if mode in ("none", "const"):
            return mode, None
        maps = self.rt.generation_noise(n, mode, seed, seeds)
        # Block 0's first map has batch 1 (shared by the request's images): give every row its copy (a view).
        return "maps", [m.expand(n, -1, -1, -1) for m in maps]

    async def _decode_maps(self, latents: Tensor, noise: tuple[str, list[Tensor] | None], call: Call) -> Tensor:
        """w [n, D] or styles [n, 2L, D] (valid: checked where they came in or made by the Runtime) and (kind, maps)
        -> uint8 images [n, R, R, C] on the model's device, through the decode batcher."""
        kind, maps = noise
        return await self.decode_batcher.run(("decode", kind, latents.ndim), [latents, *(maps or [])], call.deadline,
                                             call.caller)

    async def _decode(self, latents: Tensor, noise: pb.Noise, call: Call, seeds: Sequence[int] | None = None) -> Tensor:
        """w [n, D] or styles [n, 2L, D] -> uint8 images [n, R, R, C] on the model's device."""
        mode, seed = noise_args(noise)
        n = latents.shape[0]
        # Constant noise and none take no work (no maps travel); random maps are megabytes of draws: the pool's.
        maps = (self._noise_maps(n, mode, seed, seeds) if mode in ("none", "const")
                else await self._in_pool(self._noise_maps, n, mode, seed, seeds))
        return await self._decode_maps(latents, maps, call)

    def _image_parts(self, images: Tensor, out: pb.OutputOptions) -> list:
        """uint8 [n, R, R, C] on the model's device -> n Image messages in wire form (alae_rt.serve.wire). Only the
        uint8 pixels cross to the host, once; JPEG on a GPU is encoded there (nvJPEG) and only the files cross."""
        if out.format == pb.IMAGE_FORMAT_JPEG and images.shape[3] != 4 and nvjpeg.available(images.device):
            return [encoded_parts(data) for data in nvjpeg.encode(images, out.jpeg_quality or DEFAULT_JPEG_QUALITY)]
        pixels = to_host(images).numpy()
        png = out.format not in (pb.IMAGE_FORMAT_JPEG, pb.IMAGE_FORMAT_RAW)  # PNG, the default, as image_parts
        if png and len(pixels) > 1:  # the images' PNGs side by side, in order
            return [encoded_parts(data) for data in self.codec.encode_png_many(list(pixels))]
        return [image_parts(a, out.format, out.jpeg_quality, self.codec.encode_png) for a in pixels]

    async def _respond(self, call: Call, images: Tensor | None, latents: Tensor | None, out: pb.OutputOptions,
                       message=pb.ImagesResponse, **fields: Any):
        """The response, built in the worker pool: image encoding and megabytes of pixels stay off the event loop
        (except a lone call's response that needs no encoding: INLINE_RESPONSE_BYTES)."""
        if self.inflight == 1 and (images is None or out.skip_images or (
                out.format == pb.IMAGE_FORMAT_RAW and images.nbytes <= INLINE_RESPONSE_BYTES)):
            return self._on_stream(self._response, call, images, latents, out, message, fields)
        return await self._in_pool(self._response, call, images, latents, out, message, fields)

    def _response(self, call: Call, images: Tensor | None, latents: Tensor | None, out: pb.OutputOptions, message,
                  fields: dict[str, Any]):
        """The response in wire form for gRPC (its serializer passes it through), as a message for other front
        ends; written once, as wire bytes, either way."""
        head = message(**fields)
        if out.return_latents and latents is not None:
            head.latents.CopyFrom(array_to_tensor(self._host_latents(latents)))
        parts = self._image_parts(images, out) if images is not None and not out.skip_images else []
        resp = frame_response(head, "images", parts, self.cfg.max_message_bytes)
        return resp if call.wire else message.FromString(resp.data)

    async def _pair(self, req: pb.MixRequest | pb.InterpolateRequest, call: Call) -> tuple[Tensor, Tensor]:
        if not req.a.ByteSize() and not req.b.ByteSize():
            raise invalid("a", "missing (and so is b)")
        return await self._source(req.a, "a", call), await self._source(req.b, "b", call)

    # ---- the one wrapper: status codes, metrics and logs around every RPC ------------------------------------
    @asynccontextmanager
    async def _call(self, method: str, context, request: Any, needs_model: bool = True) -> AsyncIterator[Call]:
        """Around each RPC's body, unary or streaming: refuses corrupt messages and calls while warming up or
        draining, counts calls in flight, turns every failure into a status (never a traceback to the caller),
        records metrics and logs."""
        call = Call(method, context.peer(), time.perf_counter(), self._deadline(context),
                    wire=not isinstance(context, CallContext), caller=self._caller(context))
        # A refused call raises a fresh copy of its error, held by no local: the error caught holds its traceback,
        # whose frames hold the request message (a refused 60 MB Decode) and this frame, whose locals would hold
        # the error again - a cycle that only the garbage collector frees, long after (alae_rt.serve.wire's
        # RequestError.copy). gRPC's callers get it as a status from add_to_server's wrapper, which aborts only
        # once this call's frames are gone: its AbortError and the call's state hold each other.
        refused = None
        try:
            if isinstance(request, BadMessage):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            self._begin(needs_model)
        except RequestError as exc:
            refused = exc.copy()
        if refused is not None:
            self._finish(call, refused.code, refused.message)
            self._release_later(request)
            raise refused.copy()
        try:
            yield call
        except asyncio.CancelledError:
            self._finish(call, grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a traceback to the caller
            refused = self._status_of(exc).copy()
        else:
            self._finish(call, grpc.StatusCode.OK)
            return
        finally:
            self._end()
        self._finish(call, refused.code, refused.message)
        self._release_later(request)
        raise refused.copy()

    def _release_later(self, request: Any) -> None:
        """After a large refused request: release_memory once it is freed (one for a burst of them)."""
        if self._release is None and getattr(request, "ByteSize", lambda: 0)() >= RELEASE_BYTES:
            self._release = asyncio.get_running_loop().call_later(RELEASE_DELAY_S, self._release_now)

    def _release_now(self) -> None:
        self._release = None
        try:
            self.pool.submit(release_memory)  # a few ms: off the event loop
        except RuntimeError:  # the server has stopped, and its pool with it
            pass

    def _caller(self, context) -> str:
        """Who takes turns: the token a call presented, where auth is on (a refused one never gets this far over
        gRPC; the HTTP API checks it first too), else its connection."""
        if self._tokens:
            if isinstance(context, CallContext):
                value = context.authorization
            else:
                value = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), "")
            index = token_index(value, self._tokens)
            if index is not None:
                return f"token {index}"
        return context.peer()

    def _status_of(self, exc: BaseException) -> RequestError:
        if isinstance(exc, InputError):
            exc = request_error(exc)
        if isinstance(exc, RequestError):
            return exc
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
        if isinstance(exc, QueueFull):
            return RequestError(code, f"{exc}; retry later (--max-queue)", http=429)
        if isinstance(exc, Dropped):
            return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, f"dropped before compute: {exc}")
        if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc)):
            return RequestError(code, "out of memory on the server; send fewer images per request", http=503)
        log.error("internal error", exc_info=exc, extra={"fields": {"event": "internal_error"}})
        return RequestError(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")

    def _begin(self, needs_model: bool) -> None:
        if needs_model and self.state != "serving":
            why = "warming up" if self.state == "warming" else "shutting down"
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"the server is {why}; retry shortly")
        self.inflight += 1
        self.idle.clear()
        self.metrics.inflight.set(self.inflight)

    def _end(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.set(self.inflight)
        if self.inflight == 0:
            self.idle.set()

    def _finish(self, call: Call, code: grpc.StatusCode, message: str = "") -> None:
        seconds = time.perf_counter() - call.started
        self.metrics.requests.labels(call.method, code.name).inc()
        self.metrics.latency.labels(call.method).observe(seconds)
        fields = {"event": "rpc", "method": call.method, "code": code.name, "ms": round(seconds * 1000, 2),
                  "images": call.images, "peer": call.peer}
        if message:
            fields["error"] = message
        if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            log.info("rpc", extra={"fields": fields})
            return
        # Refused calls' lines, per caller (its address: a new connection is not a new caller), within a rate: a
        # client sending bad calls in a loop grows the log by a bounded amount.
        write, dropped = self.error_lines.take(log_caller(call.caller))
        if not write:
            self.metrics.log_dropped.inc()
            return
        if dropped:
            fields["dropped_before"] = dropped
        log.warning("rpc", extra={"fields": fields})

    # ---- the RPCs -----------------------------------------------------------------------------------------------
    async def Encode(self, req: pb.EncodeRequest, context) -> pb.EncodeResponse:
        async with self._call("Encode", context, req) as call:
            w = await self._encode(req.images, "images", call)
            return call.done(pb.EncodeResponse(latents=array_to_tensor(self._host_latents(w))))

    async def Decode(self, req: pb.DecodeRequest, context) -> pb.ImagesResponse:
        async with self._call("Decode", context, req) as call:
            noise_args(req.noise)
            check_output(req.output)
            if not req.HasField("latents"):
                raise invalid("latents", "missing")
            w = await self._latents(req.latents, "latents")
            images = await self._decode(w, req.noise, call)
            return call.done(await self._respond(call, images, w, req.output))

    async def Reconstruct(self, req: pb.ReconstructRequest, context) -> pb.ImagesResponse:
        async with self._call("Reconstruct", context, req) as call:
            noise_args(req.noise)
            check_output(req.output)
            x = await self._inputs(req.images, "images", call)  # [n, C, R, R]
            w = await self.encode_batcher.run("encode", [x], call.deadline, call.caller)
            images = await self._decode(w, req.noise, call)
            quality = await self._in_pool(self._psnr, x, images) if req.return_psnr else []
            return call.done(await self._respond(call, images, w, req.output, psnr=quality))

    async def Generate(self, req: pb.GenerateRequest, context) -> pb.ImagesResponse:
        async with self._call("Generate", context, req) as call:
            noise_args(req.noise)
            check_output(req.output)
            psi, cutoff = generation_args(req, self.rt)
            seeds = None
            if req.seeds:
                check_count(len(req.seeds), "seeds", self.cfg, "seeds")
                seeds = list(req.seeds)
                styles = await self._in_pool(self.rt.seed_styles, seeds, psi, cutoff)
            else:
                z = await self._latents(req.z, "z", allow_styles=False)
                styles = await self._in_pool(self.rt.z_styles, z, psi, cutoff)
            images = await self._decode(styles, req.noise, call, seeds=seeds)
            return call.done(await self._respond(call, images, styles, req.output))

    async def Edit(self, req: pb.EditRequest, context) -> pb.ImagesResponse:
        async with self._call("Edit", context, req) as call:
            noise_args(req.noise)
            check_output(req.output)
            edits, mode, layers = edit_args(req, self.rt, self.cfg)
            w = await self._source(req.source, "source", call)
            with runtime_fields({"w": "source"}):
                edited = await self._in_pool(self.rt.edit, w, edits, mode=mode, layers=layers)
            images = await self._decode(edited, req.noise, call)
            return call.done(await self._respond(call, images, edited, req.output))

    async def Mix(self, req: pb.MixRequest, context) -> pb.ImagesResponse:
        async with self._call("Mix", context, req) as call:
            noise_args(req.noise)
            check_output(req.output)
            self.rt.check_cutoff(req.cutoff)  # before the sources are encoded
            a, b = await self._pair(req, call)
            with runtime_fields(PAIR_FIELDS):
                styles = await self._in_pool(self.rt.mix_styles, a, b, req.cutoff)  # [n, 2L, D]
            images = await self._decode(styles, req.noise, call)
            return call.done(await self._respond(call, images, styles, req.output))

    async def Interpolate(self, req: pb.InterpolateRequest, context) -> AsyncIterator[pb.InterpolateFrame]:
        async with self._call("Interpolate", context, req) as call:
            mode, seed = noise_args(req.noise)
            check_output(req.output)
            check_steps(req.steps, self.cfg)
            a, b = await self._pair(req, call)
            with runtime_fields(PAIR_FIELDS):
                path = await self._in_pool(self.rt.interpolate, a, b, req.steps)  # [steps, n, ...]
            # One set of noise maps for every frame, so that only the latent moves.
            maps = await self._in_pool(self._noise_maps, path.shape[1], mode, seed)
            for i in range(req.steps):
                images = await self._decode_maps(path[i], maps, call)
                frame = await self._respond(call, images, path[i], req.output, message=pb.InterpolateFrame, index=i,
                                            t=i / (req.steps - 1))
                call.images += 1
                yield frame

    def _psnr(self, x: Tensor, images: Tensor) -> list[float]:
        """Each reconstruction's PSNR against its input as the encoder saw it: x [n, C, R, R] in [-1, 1] made uint8
        as images are, against uint8 images [n, R, R, C]."""
        inputs, outputs = self.rt.to_uint8(x), to_host(images).numpy()
        return [psnr(a, b) for a, b in zip(inputs, outputs)]

    def direction_info(self) -> list[pb.DirectionInfo]:
        """Each named direction with its label and slider range: the directions folder's (alae_rt.directions),
        else DEFAULT_RANGE; within +-max_strength."""
        out, limit = [], self.cfg.max_strength
        for name in sorted(self.rt.directions):
            info = self.rt.direction_info.get(name, {})
            low, high = info.get("range") or DEFAULT_RANGE
            out.append(pb.DirectionInfo(name=name, label=info.get("label", name), min=max(low, -limit),
                                        max=min(high, limit)))
        return out

    async def GetModelInfo(self, req: pb.GetModelInfoRequest, context) -> pb.ModelInfo:
        from alae_rt import __version__

        async with self._call("GetModelInfo", context, req, needs_model=False) as call:
            rt, c = self.rt, self.rt.config
            return call.done(pb.ModelInfo(
                config_name=c.name, config_json=c.to_json(), resolution=c.resolution, channels=c.channels,
                latent_size=c.latent_size, layer_count=c.layer_count, num_styles=c.num_styles,
                directions=sorted(rt.directions), backend=rt.backend.name, device=str(rt.device),
                dtype=str(rt.dtype).replace("torch.", ""), weights=file_names_only(rt.source),
                truncation_psi=c.truncation_psi,
                truncation_cutoff=rt.check_cutoff(None), max_batch=rt.max_batch, max_images=self.cfg.max_images,
                max_message_bytes=self.cfg.max_message_bytes, max_pixels=self.cfg.max_pixels,
                max_strength=self.cfg.max_strength, max_steps=self.cfg.max_steps, version=__version__,
                direction_info=self.direction_info(),
                style_ranges=[pb.StyleRange(name=k, layers=v) for k, v in c.style_ranges.items()
                              if rt.method.per_layer_styles],
                method=rt.method.name))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Give the pages of freed memory back to the system (glibc's malloc_trim; elsewhere nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def log_caller(caller: str) -> str:
    """Whose error lines are counted together: a connection's address without its port ("ipv4:10.0.0.1:5000" ->
    "ipv4:10.0.0.1"), or an identity as it is ("token 0")."""
    if caller.startswith(("ipv4:", "ipv6:")):
        return caller.rsplit(":", 1)[0]
    return caller


def add_to_server(service: AlaeService, server: grpc.aio.Server) -> None:
    """Register the service's RPCs (pb_grpc.add_AlaeServicer_to_server's table) with request parsers that turn a
    corrupt message into a BadMessage for the RPC's wrapper to refuse, instead of gRPC's uncounted UNKNOWN."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["Alae"].methods:
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        answer = _streamed_status if method.server_streaming else _unary_status
        handlers[method.name] = make(answer(getattr(service, method.name)),
                                     request_deserializer=tolerant_parser(getattr(pb, method.input_type.name)),
                                     response_serializer=serialize)
    name = pb.DESCRIPTOR.services_by_name["Alae"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


# A refused call ends with context.abort, outside the except block and without the request: a status set with
# set_code on a returning handler goes out after response headers, and a channel's retry policy (the balanced client's,
# alae_rt.serve.balancing) never retries a call whose headers came - a draining server's UNAVAILABLE reached the caller.
# abort's error and the call's state hold each other, and with them this frame: by then it holds neither the request
# (a refused 60 MB Decode) nor the RequestError's traceback (see AlaeService._call).
def _unary_status(rpc: Callable) -> Callable:
    """A unary RPC whose RequestError becomes the call's status (trailers only: retryable where the code is)."""
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await rpc(request, context)
        except RequestError as exc:
            refused = (exc.code, exc.message)
        del request
        await context.abort(*refused)

    return unary


def _streamed_status(rpc: Callable) -> Callable:
    """A streaming RPC whose RequestError becomes the call's status (before a frame: trailers only)."""
    async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in rpc(request, context):
                yield item
            return
        except RequestError as exc:
            refused = (exc.code, exc.message)
        del request
        await context.abort(*refused)

    return streamed
