"""Proto messages <-> arrays: images and packed float32 tensors, checked with errors that name the field."""

from __future__ import annotations

import math

import grpc
import numpy as np

from alae_rt import codecs
from alae_rt.errors import InputError
from alae_rt.images import decode_image_bytes
from alae_rt.latents import check_latents
from alae_rt.serve import alae_rt_pb2 as pb

RAW_CHANNELS = (1, 3, 4)
MAX_DIMS = 4  # latents are [N, D] or [N, 2L, D]; directions [D] or [2L, D]


# gRPC status -> the HTTP API's status (alae_rt.serve.http_api). RESOURCE_EXHAUSTED is 413 (a request over a limit)
# unless the error says otherwise: a full queue is 429 (retry later), not a request too large.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.RESOURCE_EXHAUSTED: 413, grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class RequestError(Exception):
    """A request the server refuses: a gRPC status code, a message naming the field, and the HTTP status the HTTP
    API answers it with (by default the code's, HTTP_STATUS)."""

    def __init__(self, code: grpc.StatusCode, message: str, http: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http = http or HTTP_STATUS.get(code, 500)


def invalid(field: str, problem: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")


def over_limit(field: str, problem: str) -> RequestError:
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{field}: {problem}")


# ---- tensors ------------------------------------------------------------------------------------------------


def tensor_to_array(t: pb.Tensor, field: str) -> np.ndarray:
    """A Tensor message -> float32 array of its shape, finite; errors name `field`."""
    shape = tuple(int(s) for s in t.shape)
    if not shape:
        raise invalid(f"{field}.shape", "missing (give e.g. [N, D])")
    if len(shape) > MAX_DIMS:
        raise invalid(f"{field}.shape", f"{len(shape)} dimensions; at most {MAX_DIMS}")
    if 0 in shape:
        raise invalid(f"{field}.shape", f"{list(shape)} is empty")
    count = math.prod(shape)  # Python integers: np.prod wraps around int64 for [65536] * 4
    if len(t.data) != 4 * count:
        raise invalid(f"{field}.data", f"{len(t.data)} bytes, but shape {list(shape)} needs {4 * count} "
                                       "(packed little-endian float32)")
    arr = np.frombuffer(t.data, dtype="<f4").reshape(shape)
    if not np.isfinite(arr).all():
        raise invalid(f"{field}.data", "holds NaN or Inf")
    return arr.astype(np.float32)  # a writable native-order copy: torch.from_numpy needs one


def array_to_tensor(a: np.ndarray) -> pb.Tensor:
    a = np.ascontiguousarray(a, dtype="<f4")
    return pb.Tensor(shape=list(a.shape), data=a.tobytes())


def tensor_to_latents(t: pb.Tensor, field: str, latent_size: int, num_styles: int,
                      allow_styles: bool = True) -> np.ndarray:
    """A Tensor message of latents -> float32 w [N, D] (or, when allowed, styles [N, 2L, D]), checked by the
    Runtime's own rule (alae_rt.latents); errors name `field`."""
    arr = tensor_to_array(t, field)
    try:
        check_latents(arr, latent_size, num_styles, f"{field}.shape", allow_styles, values_name=f"{field}.data")
    except InputError as exc:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    return arr


# ---- images ---------------------------------------------------------------------------------------------------


def image_to_array(img: pb.Image, field: str, max_pixels: int) -> np.ndarray:
    """An Image message -> uint8 [H, W, C]; refuses corrupt data, odd channel counts and images over max_pixels."""
    kind = img.WhichOneof("data")
    if kind == "encoded":
        if not img.encoded:
            raise invalid(f"{field}.encoded", "empty")
        try:
            return decode_image_bytes(img.encoded, max_pixels=max_pixels, name=f"{field}.encoded")
        except InputError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    if kind == "raw":
        raw = _checked_raw(img.raw, field, max_pixels)
        # [H, W, C], a copy: the message's buffer is read-only
        return np.frombuffer(raw.pixels, dtype=np.uint8).reshape(raw.height, raw.width, raw.channels).copy()
    raise invalid(field, "no image data (set encoded or raw)")


def image_pixels(img: pb.Image, field: str, max_pixels: int) -> int:
    """An Image message's pixel count, from its header (encoded) or its fields (raw), checked against max_pixels
    without decoding a pixel; errors are image_to_array's."""
    kind = img.WhichOneof("data")
    if kind == "encoded":
        if not img.encoded:
            raise invalid(f"{field}.encoded", "empty")
        try:
            width, height = codecs.image_size(img.encoded, max_pixels=max_pixels, name=f"{field}.encoded")
        except InputError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return width * height
    if kind == "raw":
        raw = _checked_raw(img.raw, field, max_pixels)
        return raw.width * raw.height
    raise invalid(field, "no image data (set encoded or raw)")


def _checked_raw(raw: pb.RawImage, field: str, max_pixels: int) -> pb.RawImage:
    if raw.channels not in RAW_CHANNELS:
        raise invalid(f"{field}.raw.channels", f"{raw.channels}; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    if raw.width < 1 or raw.height < 1:
        raise invalid(f"{field}.raw", f"width and height must be >= 1, got {raw.width}x{raw.height}")
    if raw.width * raw.height > max_pixels:
        raise invalid(f"{field}.raw", f"{raw.width}x{raw.height} pixels is over the limit of {max_pixels}")
    want = raw.width * raw.height * raw.channels
    if len(raw.pixels) != want:
        raise invalid(f"{field}.raw.pixels", f"{len(raw.pixels)} bytes, but {raw.height}x{raw.width}x"
                                             f"{raw.channels} uint8 needs {want}")
    return raw


def write_image(into: pb.Image, arr: np.ndarray, fmt: int, jpeg_quality: int = 0) -> int:
    """uint8 [H, W, C] -> `into` (e.g. a response's `images.add()`) as PNG, JPEG (alae_rt.codecs) or raw pixels; returns
    the bytes written. Fields are set in place: a nested message built apart would be copied in (megabytes at 1024)."""
    if fmt == pb.IMAGE_FORMAT_RAW:
        into.raw.height, into.raw.width, into.raw.channels = arr.shape
        into.raw.pixels = data = arr.tobytes()  # a C-order copy
    else:
        data = (codecs.encode_jpeg(arr, jpeg_quality or codecs.DEFAULT_JPEG_QUALITY) if fmt == pb.IMAGE_FORMAT_JPEG
                else codecs.encode_png(arr))
        into.encoded = data
    return len(data)


def decode_image_message(img: pb.Image) -> np.ndarray:
    """A server's output Image -> uint8 [H, W, C] (client side: the server's images are trusted in size)."""
    if img.WhichOneof("data") == "raw":
        r = img.raw
        return np.frombuffer(r.pixels, dtype=np.uint8).reshape(r.height, r.width, r.channels)
    return decode_image_bytes(img.encoded, name="response image")
