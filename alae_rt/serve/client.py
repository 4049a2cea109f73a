"""Python clients of the alae_rt.v1 service: `AlaeClient` (blocking) and `AsyncAlaeClient` (asyncio)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from alae_rt.errors import AlaeError, InputError
from alae_rt.latents import check_seed
from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc
from alae_rt.serve.wire import array_to_tensor, decode_image_message

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_MB = 256
FORMATS = {"png": pb.IMAGE_FORMAT_PNG, "jpeg": pb.IMAGE_FORMAT_JPEG, "raw": pb.IMAGE_FORMAT_RAW}
NOISE = {"const": pb.NOISE_MODE_CONST, "random": pb.NOISE_MODE_RANDOM, "none": pb.NOISE_MODE_NONE}
EDIT_MODES = {"add": pb.EDIT_MODE_ADD, "set": pb.EDIT_MODE_SET}

# An image: a file path, encoded bytes (PNG, JPEG, ...) or uint8 pixels [H, W, C] / [H, W].
ImageInput = str | Path | bytes | np.ndarray
# Retries of UNAVAILABLE (a server warming up, draining or restarting): the first wait, doubling up to the last.
RETRY_FIRST_S, RETRY_MAX_S = 0.25, 4.0
# CANCELLED is retried too: these clients never cancel a call themselves (Ctrl-C raises KeyboardInterrupt, a timeout
# is DEADLINE_EXCEEDED, a cancelled asyncio task gets CancelledError), and gRPC's core ends a call with CANCELLED
# when the server took it but stopped before handing it to a handler (grpc/grpc#41785): a server going away, as
# UNAVAILABLE says.
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
# While retrying, the channel reconnects this often at least (grpc's own backoff would grow to minutes).
_RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                      ("grpc.max_reconnect_backoff_ms", 2000)]


class RemoteError(AlaeError):
    """The server refused or failed a call: `code` is the gRPC status, `details` its message; `field` the request
    field an INVALID_ARGUMENT names first ("truncation_psi", "a.truncation_psi", "cutoff"), for a front end to name
    its own option instead."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = ""):
        super().__init__(f"{method + ': ' if method else ''}{code.name}: {details}")
        self.code = code
        self.details = details
        named = re.match(r"([A-Za-z_][\w.]*)(?:\[\d+\])?: ", details)
        self.field = named.group(1) if named and code == grpc.StatusCode.INVALID_ARGUMENT else None


@dataclass(frozen=True)
class Seeds:
    """A latent source: z from each seed -> F -> truncation (psi: the model's by default)."""

    seeds: Sequence[int]
    psi: float | None = None


@dataclass
class Result:
    """Images (uint8 [H, W, C] arrays, or encoded bytes when asked for) and, when asked for, their latents."""

    images: list[Any]
    latents: np.ndarray | None = None


# ---- building requests (shared by both clients) -----------------------------------------------------------------


def image_message(image: ImageInput) -> pb.Image:
    """A path or bytes travel as the encoded file; an array as raw pixels."""
    if isinstance(image, (str, Path)):
        try:
            return pb.Image(encoded=Path(image).read_bytes())
        except OSError as exc:
            raise AlaeError(f"{image}: cannot read ({exc.strerror or exc})") from None
    if isinstance(image, (bytes, bytearray)):
        return pb.Image(encoded=bytes(image))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise AlaeError(f"an image array must be uint8 [H, W, C] or [H, W], got {arr.dtype} {list(arr.shape)}")
    h, w, c = arr.shape
    return pb.Image(raw=pb.RawImage(pixels=np.ascontiguousarray(arr).tobytes(), width=w, height=h, channels=c))


def image_messages(images: ImageInput | Iterable[ImageInput]) -> list[pb.Image]:
    """One image or several; a uint8 array [N, H, W, C] is N images."""
    if isinstance(images, (str, Path, bytes, bytearray)):
        return [image_message(images)]
    if isinstance(images, np.ndarray):
        return [image_message(a) for a in images] if images.ndim == 4 else [image_message(images)]
    return [image_message(i) for i in images]


def source_message(src: Any) -> pb.LatentSource:
    """Latents (float array [N, D] / [N, 2L, D]), Seeds(...), or images -> LatentSource."""
    if isinstance(src, pb.LatentSource):
        return src
    if isinstance(src, Seeds):
        msg = pb.LatentSource(seeds=seed_values(src.seeds))
        if src.psi is not None:
            msg.truncation_psi = src.psi
        return msg
    if isinstance(src, np.ndarray) and src.dtype.kind == "f" or _is_tensor(src):
        return pb.LatentSource(latents=array_to_tensor(_float_array(src)))
    return pb.LatentSource(images=image_messages(src))


def seed_values(seeds: Iterable[Any], field: str = "seeds") -> list[int]:
    """Seeds as the wire's uint64 values: the Runtime's rule (alae_rt.latents.check_seed), before any call."""
    return [check_seed(s, field) for s in seeds]


def uint_value(value: Any, field: str, bits: int = 32) -> int:
    """A count, index or seed for an unsigned field of the wire, checked here (protobuf would raise a bare ValueError
    for -1 or 2**64)."""
    top = 2**bits - 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) <= top:
        bound = "2**64 - 1" if bits == 64 else str(top)
        raise InputError(f"{field}: {value!r} is out of range; expected an integer in [0, {bound}]", field=field)
    return int(value)


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _float_array(x: Any) -> np.ndarray:
    if _is_tensor(x):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    return arr[None] if arr.ndim == 1 else arr


def noise_message(noise: str, seed: int | None) -> pb.Noise:
    if noise not in NOISE:
        raise AlaeError(f"noise must be one of {', '.join(NOISE)}, got {noise!r}")
    msg = pb.Noise(mode=NOISE[noise])
    if seed is not None:
        msg.seed = uint_value(seed, "seed", 64)
    return msg


def output_message(fmt: str, return_latents: bool, jpeg_quality: int = 0) -> pb.OutputOptions:
    if fmt not in FORMATS:
        raise AlaeError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return pb.OutputOptions(format=FORMATS[fmt], return_latents=return_latents, jpeg_quality=jpeg_quality)


def edit_messages(edits: Mapping[Any, float] | Iterable[tuple[Any, float]]) -> list[pb.DirectionEdit]:
    """{name: strength}, or (direction, strength) pairs with a direction a name or an array [D] / [2L, D]
    (arrays cannot be dict keys)."""
    out = []
    for key, strength in (edits.items() if isinstance(edits, Mapping) else edits):
        if isinstance(key, str):
            out.append(pb.DirectionEdit(name=key, strength=float(strength)))
        else:
            vec = np.asarray(_float_array(key)[0] if np.ndim(key) == 1 else _float_array(key), dtype=np.float32)
            out.append(pb.DirectionEdit(vector=array_to_tensor(vec), strength=float(strength)))
    return out


def latents_of(t: pb.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape)).astype(np.float32)


def result_of(resp: Any, decode: bool) -> Result:
    images = [decode_image_message(i) if decode or i.WhichOneof("data") == "raw" else i.encoded for i in resp.images]
    return Result(images, latents_of(resp.latents) if resp.HasField("latents") else None)


def _credentials(token: str | None, tls: bool, tls_ca: str | Path | bytes | None):
    if token is not None and not tls:
        # Tokens over plaintext are refused by grpc's call credentials; send them as plain metadata instead.
        return None
    if not tls:
        return None
    roots = Path(tls_ca).read_bytes() if isinstance(tls_ca, (str, Path)) else tls_ca
    creds = grpc.ssl_channel_credentials(root_certificates=roots)
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return creds


class _Base:
    """retry_s: for this long after a call first gets UNAVAILABLE (a server warming up, draining or restarting) or
    CANCELLED (see RETRIED), try it again with backoff (RETRY_FIRST_S doubling up to RETRY_MAX_S); 0: no retries.
    Every call is a pure function of its request, so a retry gives what the first try would have. on_retry(message)
    hears of each."""

    def __init__(self, server: str = DEFAULT_SERVER, *, token: str | None = None, token_file: str | Path | None = None,
                 tls: bool = False, tls_ca: str | Path | bytes | None = None, server_name: str | None = None,
                 timeout: float | None = None, max_message_mb: float = DEFAULT_MAX_MESSAGE_MB,
                 retry_s: float = 0.0, on_retry: Callable[[str], Any] | None = None):
        if token_file is not None:
            try:
                token = Path(token_file).read_text().strip().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise AlaeError(f"{token_file}: cannot read a token ({exc})") from None
        self.server = server
        self.timeout = timeout
        self._tls = tls or tls_ca is not None
        self._creds = _credentials(token, self._tls, tls_ca)
        # Over TLS the token rides in the call credentials; in plaintext (e.g. loopback) as metadata.
        self._metadata = (("authorization", f"Bearer {token}"),) if token is not None and not self._tls else None
        limit = int(max_message_mb * 1024 * 1024)
        # A connection of its own (gRPC shares one between channels with the same settings otherwise): clients
        # spread over a server's --processes, and one client's large transfers do not queue behind another's.
        self._options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                         ("grpc.use_local_subchannel_pool", 1)]
        if server_name:
            self._options.append(("grpc.ssl_target_name_override", server_name))
        self.retry_s = float(retry_s)
        self.on_retry = on_retry
        if self.retry_s > 0:
            self._options.extend(_RECONNECT_OPTIONS)

    def _kw(self, timeout: float | None) -> dict:
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self._metadata}

    def _retry_wait(self, exc: grpc.RpcError, method: str, started: float, attempt: int) -> float:
        """The seconds to wait before trying `method` again after `exc`; raises RemoteError when it must not be."""
        code, details = exc.code(), exc.details() or ""
        if code not in RETRIED or self.retry_s <= 0:
            raise RemoteError(code, details, method) from None
        wait = min(RETRY_FIRST_S * 2**attempt, RETRY_MAX_S)
        if time.monotonic() + wait - started > self.retry_s:
            raise RemoteError(code, f"{details} (still unavailable after {self.retry_s:g} s of retries)",
                              method) from None
        if self.on_retry is not None:
            self.on_retry(f"{method}: {code.name} ({details}); retrying for up to {self.retry_s:g} s")
        return wait


class AlaeClient(_Base):
    """Blocking client. Images go in as paths, encoded bytes or uint8 arrays; images come back as uint8 arrays
    ([H, W, C]), or as the encoded files with `decode=False`. Errors raise RemoteError (code, details).

    >>> with AlaeClient("127.0.0.1:50051", retry_s=30) as c:
    ...     w = c.encode(["face.png"])                     # [1, D]
    ...     img = c.decode(w).images[0]                    # uint8 [R, R, C]
    """

    def __init__(self, server: str = DEFAULT_SERVER, **kwargs: Any):
        super().__init__(server, **kwargs)
        self.channel = (grpc.secure_channel(server, self._creds, options=self._options) if self._tls
                        else grpc.insecure_channel(server, options=self._options))
        self.stub = pb_grpc.AlaeStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AlaeClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        started, attempt = None, 0
        while True:
            try:
                return getattr(self.stub, method)(request, **self._kw(timeout))
            except grpc.RpcError as exc:
                started = time.monotonic() if started is None else started
                wait = self._retry_wait(exc, method, started, attempt)
            attempt += 1
            time.sleep(wait)

    def info(self, timeout: float | None = None) -> pb.ModelInfo:
        return self._call("GetModelInfo", pb.GetModelInfoRequest(), timeout)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The standard health check: "SERVING", "NOT_SERVING", ..."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            resp = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=service), **self._kw(timeout))
        except grpc.RpcError as exc:
            raise RemoteError(exc.code(), exc.details() or "", "Health.Check") from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def encode(self, images: ImageInput | Iterable[ImageInput], timeout: float | None = None) -> np.ndarray:
        """Images -> w [N, D] float32."""
        return latents_of(self._call("Encode", pb.EncodeRequest(images=image_messages(images)), timeout).latents)

    def decode(self, latents: Any, noise: str = "const", seed: int | None = None, format: str = "png",
               decode: bool = True, return_latents: bool = False, timeout: float | None = None) -> Result:
        """w [N, D] or styles [N, 2L, D] -> images."""
        req = pb.DecodeRequest(latents=array_to_tensor(_float_array(latents)), noise=noise_message(noise, seed),
                               output=output_message(format, return_latents))
        return result_of(self._call("Decode", req, timeout), decode)

    def reconstruct(self, images: ImageInput | Iterable[ImageInput], noise: str = "const", seed: int | None = None,
                    format: str = "png", decode: bool = True, return_latents: bool = False,
                    timeout: float | None = None) -> Result:
        req = pb.ReconstructRequest(images=image_messages(images), noise=noise_message(noise, seed),
                                    output=output_message(format, return_latents))
        return result_of(self._call("Reconstruct", req, timeout), decode)

    def generate(self, seeds: Sequence[int] | None = None, z: Any = None, psi: float | None = None,
                 cutoff: int | None = None, noise: str = "const", seed: int | None = None, format: str = "png",
                 decode: bool = True, return_latents: bool = False, timeout: float | None = None) -> Result:
        """Images from seeds or z [N, D]; latents (with return_latents) are the styles [N, 2L, D] decoded."""
        return result_of(self._call("Generate", generate_request(seeds, z, psi, cutoff, noise, seed, format,
                                                                 return_latents), timeout), decode)

    def edit(self, source: Any, edits: Mapping[Any, float] | Iterable[tuple[Any, float]], mode: str = "add",
             layers: Sequence[int] | None = None, noise: str = "const", seed: int | None = None,
             format: str = "png", decode: bool = True, return_latents: bool = False,
             timeout: float | None = None) -> Result:
        """source: images, latents or Seeds(...); edits: {direction name: strength}, or (direction, strength) pairs
        with a direction a name (`info().directions`) or an array [D] / [2L, D]."""
        return result_of(self._call("Edit", edit_request(source, edits, mode, layers, noise, seed, format,
                                                         return_latents), timeout), decode)

    def mix(self, a: Any, b: Any, cutoff: int, noise: str = "const", seed: int | None = None, format: str = "png",
            decode: bool = True, return_latents: bool = False, timeout: float | None = None) -> Result:
        """Style inputs < cutoff from a, the rest from b; a and b: images, latents or Seeds(...)."""
        req = pb.MixRequest(a=source_message(a), b=source_message(b), cutoff=uint_value(cutoff, "cutoff"),
                            noise=noise_message(noise, seed), output=output_message(format, return_latents))
        return result_of(self._call("Mix", req, timeout), decode)

    def interpolate(self, a: Any, b: Any, steps: int, noise: str = "const", seed: int | None = None,
                    format: str = "png", decode: bool = True, return_latents: bool = False,
                    timeout: float | None = None) -> Iterator[tuple[int, float, Result]]:
        """Frames (index, t, Result) from a to b, as the server streams them."""
        req = pb.InterpolateRequest(a=source_message(a), b=source_message(b), steps=uint_value(steps, "steps"),
                                    noise=noise_message(noise, seed), output=output_message(format, return_latents))
        started, attempt, frames = None, 0, 0
        while True:
            try:
                for frame in self.stub.Interpolate(req, **self._kw(timeout)):
                    frames += 1
                    yield frame.index, frame.t, result_of(frame, decode)
                return
            except grpc.RpcError as exc:
                if frames:  # frames already given out: a retry would repeat them
                    raise RemoteError(exc.code(), exc.details() or "", "Interpolate") from None
                started = time.monotonic() if started is None else started
                wait = self._retry_wait(exc, "Interpolate", started, attempt)
            attempt += 1
            time.sleep(wait)


class AsyncAlaeClient(_Base):
    """The asyncio client: the same methods as AlaeClient, as coroutines (interpolate: an async iterator)."""

    def __init__(self, server: str = DEFAULT_SERVER, **kwargs: Any):
        super().__init__(server, **kwargs)
        self.channel = (grpc.aio.secure_channel(server, self._creds, options=self._options) if self._tls
                        else grpc.aio.insecure_channel(server, options=self._options))
        self.stub = pb_grpc.AlaeStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncAlaeClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        started, attempt = None, 0
        while True:
            try:
                return await getattr(self.stub, method)(request, **self._kw(timeout))
            except grpc.RpcError as exc:
                started = time.monotonic() if started is None else started
                wait = self._retry_wait(exc, method, started, attempt)
            attempt += 1
            await asyncio.sleep(wait)

    async def info(self, timeout: float | None = None) -> pb.ModelInfo:
        return await self._call("GetModelInfo", pb.GetModelInfoRequest(), timeout)

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            resp = await health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=service), **self._kw(timeout))
        except grpc.RpcError as exc:
            raise RemoteError(exc.code(), exc.details() or "", "Health.Check") from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def encode(self, images: ImageInput | Iterable[ImageInput], timeout: float | None = None) -> np.ndarray:
        resp = await self._call("Encode", pb.EncodeRequest(images=image_messages(images)), timeout)
        return latents_of(resp.latents)

    async def decode(self, latents: Any, noise: str = "const", seed: int | None = None, format: str = "png",
                     decode: bool = True, return_latents: bool = False, timeout: float | None = None) -> Result:
        req = pb.DecodeRequest(latents=array_to_tensor(_float_array(latents)), noise=noise_message(noise, seed),
                               output=output_message(format, return_latents))
        return result_of(await self._call("Decode", req, timeout), decode)

    async def reconstruct(self, images: ImageInput | Iterable[ImageInput], noise: str = "const",
                          seed: int | None = None, format: str = "png", decode: bool = True,
                          return_latents: bool = False, timeout: float | None = None) -> Result:
        req = pb.ReconstructRequest(images=image_messages(images), noise=noise_message(noise, seed),
                                    output=output_message(format, return_latents))
        return result_of(await self._call("Reconstruct", req, timeout), decode)

    async def generate(self, seeds: Sequence[int] | None = None, z: Any = None, psi: float | None = None,
                       cutoff: int | None = None, noise: str = "const", seed: int | None = None,
                       format: str = "png", decode: bool = True, return_latents: bool = False,
                       timeout: float | None = None) -> Result:
        req = generate_request(seeds, z, psi, cutoff, noise, seed, format, return_latents)
        return result_of(await self._call("Generate", req, timeout), decode)

    async def edit(self, source: Any, edits: Mapping[Any, float] | Iterable[tuple[Any, float]], mode: str = "add",
                   layers: Sequence[int] | None = None, noise: str = "const", seed: int | None = None,
                   format: str = "png", decode: bool = True, return_latents: bool = False,
                   timeout: float | None = None) -> Result:
        req = edit_request(source, edits, mode, layers, noise, seed, format, return_latents)
        return result_of(await self._call("Edit", req, timeout), decode)

    async def mix(self, a: Any, b: Any, cutoff: int, noise: str = "const", seed: int | None = None,
                  format: str = "png", decode: bool = True, return_latents: bool = False,
                  timeout: float | None = None) -> Result:
        req = pb.MixRequest(a=source_message(a), b=source_message(b), cutoff=uint_value(cutoff, "cutoff"),
                            noise=noise_message(noise, seed), output=output_message(format, return_latents))
        return result_of(await self._call("Mix", req, timeout), decode)

    async def interpolate(self, a: Any, b: Any, steps: int, noise: str = "const", seed: int | None = None,
                          format: str = "png", decode: bool = True, return_latents: bool = False,
                          timeout: float | None = None) -> AsyncIterator[tuple[int, float, Result]]:
        req = pb.InterpolateRequest(a=source_message(a), b=source_message(b), steps=uint_value(steps, "steps"),
                                    noise=noise_message(noise, seed), output=output_message(format, return_latents))
        try:
            async for frame in self.stub.Interpolate(req, **self._kw(timeout)):
                yield frame.index, frame.t, result_of(frame, decode)
        except grpc.RpcError as exc:
            raise RemoteError(exc.code(), exc.details() or "", "Interpolate") from None


def generate_request(seeds, z, psi, cutoff, noise, seed, fmt, return_latents) -> pb.GenerateRequest:
    req = pb.GenerateRequest(noise=noise_message(noise, seed), output=output_message(fmt, return_latents))
    if seeds is not None:
        req.seeds.extend(seed_values(seeds))
    if z is not None:
        req.z.CopyFrom(array_to_tensor(_float_array(z)))
    if psi is not None:
        req.truncation_psi = psi
    if cutoff is not None:
        req.truncation_cutoff = uint_value(cutoff, "cutoff")
    return req


def edit_request(source, edits, mode, layers, noise, seed, fmt, return_latents) -> pb.EditRequest:
    if mode not in EDIT_MODES:
        raise AlaeError(f"edit mode must be add or set, got {mode!r}")
    return pb.EditRequest(source=source_message(source), edits=edit_messages(edits), mode=EDIT_MODES[mode],
                          layers=[uint_value(k, "layers") for k in layers or ()], noise=noise_message(noise, seed),
                          output=output_message(fmt, return_latents))
