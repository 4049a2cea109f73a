"""Proto messages <-> arrays: images and packed float32 tensors, checked with errors that name the field."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from alae_rt import codecs
from alae_rt.errors import InputError
from alae_rt.images import decode_image_bytes
from alae_rt.latents import check_latents
from alae_rt.serve import alae_rt_pb2 as pb

RAW_CHANNELS = (1, 3, 4)
# Caller text in a message (a name, an enum value, a header) is quoted up to this many characters: an error's size,
# and its log line's, is bounded however long the text sent (a 1 MB direction name once made a 1 MB error and log line).
QUOTE_CHARS = 100
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

    def copy(self) -> RequestError:
        """The same refusal without a traceback or context: what the caller is told, holding no frame (and so no
        request message) of where it was raised."""
        return RequestError(self.code, self.message, self.http)


def quote(text: str, limit: int = QUOTE_CHARS, marks: bool = True) -> str:
    """Caller text for a message: its repr (control characters escaped: no forged log lines), cut to `limit`
    characters with an ellipsis and the length; marks=False leaves out the quotation marks (for a path)."""
    shown = repr(text[:limit])
    shown = shown if marks else shown[1:-1]
    return shown if len(text) <= limit else f"{shown}... ({len(text)} characters)"


def clip(text: str, limit: int = 2 * QUOTE_CHARS) -> str:
    """A library's message that may hold caller text (a JSON parser's), cut in the middle to about `limit`
    characters: its start says what is wrong, its end where (the field)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...[{len(text) - 2 * half} of {len(text)} characters cut]...{text[-half:]}"


def invalid(field: str, problem: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")


def over_limit(field: str, problem: str) -> RequestError:
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{field}: {problem}")


# ---- tensors ------------------------------------------------------------------------------------------------


def tensor_to_array(t: pb.Tensor, field: str, finite: bool = True) -> np.ndarray:
    """A Tensor message -> float32 array of its shape, finite (unless the caller checks the values itself);
    errors name `field`."""
    shape = tuple(int(s) for s in t.shape)
    if not shape:
        raise invalid(f"{field}.shape", "missing (give e.g. [N, D])")
    if len(shape) > MAX_DIMS:
        raise invalid(f"{field}.shape", f"{len(shape)} dimensions; at most {MAX_DIMS}")
    if 0 in shape:
        raise invalid(f"{field}.shape", f"{list(shape)} is empty")
    count = math.prod(shape)  # Python integers: np.prod wraps around int64 for [65536] * 4
    data = t.data  # read once: each read of a bytes field is a copy of it
    if len(data) != 4 * count:
        raise invalid(f"{field}.data", f"{len(data)} bytes, but shape {list(shape)} needs {4 * count} "
                                       "(packed little-endian float32)")
    arr = np.frombuffer(data, dtype="<f4").reshape(shape)
    if finite and not np.isfinite(arr).all():
        raise invalid(f"{field}.data", "holds NaN or Inf")
    return arr.astype(np.float32)  # a writable native-order copy: torch.from_numpy needs one


def array_to_tensor(a: np.ndarray) -> pb.Tensor:
    a = np.ascontiguousarray(a, dtype="<f4")
    return pb.Tensor(shape=list(a.shape), data=a.tobytes())


def tensor_to_latents(t: pb.Tensor, field: str, latent_size: int, num_styles: int,
                      allow_styles: bool = True) -> np.ndarray:
    """A Tensor message of latents -> float32 w [N, D] (or, when allowed, styles [N, 2L, D]), checked by the
    Runtime's own rule (alae_rt.latents); errors name `field`."""
    arr = tensor_to_array(t, field, finite=False)  # check_latents checks the values (finite, bounded)
    try:
        check_latents(arr, latent_size, num_styles, f"{field}.shape", allow_styles, values_name=f"{field}.data")
    except InputError as exc:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    return arr


# ---- images ---------------------------------------------------------------------------------------------------


def image_to_array(img: pb.Image, field: str, max_pixels: int, decode=decode_image_bytes) -> np.ndarray:
    """An Image message -> uint8 [H, W, C]; refuses corrupt data, odd channel counts and images over max_pixels.
    `decode` reads an encoded file (alae_rt.images.decode_image_bytes, or the codec processes')."""
    kind = img.WhichOneof("data")
    if kind == "encoded":
        if not img.encoded:
            raise invalid(f"{field}.encoded", "empty")
        try:
            return decode(img.encoded, max_pixels, f"{field}.encoded")
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


# ---- responses in wire form -----------------------------------------------------------------------------------
# A 1024x1024 RAW image is 3 MB. Built as a message, its pixels would be copied four times before gRPC sees them
# (tobytes, the field setter, the serializer's buffer and its bytes object), and serialized on the event loop.
# Instead the worker pool writes each response's wire bytes itself, the pixels copied once, straight from the array
# (one bytes.join), and gRPC's serializer passes them through (`serialize`). The
# framing is the protobuf encoding's own (a length-delimited field is its key, a varint length and the bytes), with
# the field numbers read from the .proto's descriptors; fields may come in any order and a repeated message field
# may be written one element at a time, so the small fields are serialized as a message and the images appended.


@dataclass(frozen=True)
class Serialized:
    """A response in wire form, with the count of images it answers (for the access log)."""

    data: bytes
    images: int


def serialize(resp: Any) -> bytes:
    """gRPC's response serializer: a Serialized response as it is, any other message serialized."""
    return resp.data if isinstance(resp, Serialized) else resp.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(number: int, size: int) -> bytes:
    """The key and length of a length-delimited field (wire type 2) of `size` bytes."""
    return _varint(number << 3 | 2) + _varint(size)


_ENCODED = pb.Image.DESCRIPTOR.fields_by_name["encoded"].number
_RAW = pb.Image.DESCRIPTOR.fields_by_name["raw"].number
_PIXELS = pb.RawImage.DESCRIPTOR.fields_by_name["pixels"].number

# An Image message's wire bytes as buffers to join (framing bytes, then the file or the pixels' 1-D view): nothing
# large is copied until the response is joined.
ImageParts = list[bytes | np.ndarray]


def image_parts(arr: np.ndarray, fmt: int, jpeg_quality: int = 0, encode_png=codecs.encode_png) -> ImageParts:
    """uint8 [H, W, C] -> an Image message as PNG (`encode_png`: alae_rt.codecs', or the codec processes'), JPEG
    (alae_rt.codecs) or raw pixels, in wire form (parts)."""
    if fmt != pb.IMAGE_FORMAT_RAW:
        data = (codecs.encode_jpeg(arr, jpeg_quality or codecs.DEFAULT_JPEG_QUALITY) if fmt == pb.IMAGE_FORMAT_JPEG
                else encode_png(arr))
        return encoded_parts(data)
    height, width, channels = arr.shape
    pixels = np.ascontiguousarray(arr).reshape(-1)  # a view of a C-order array: the join copies it
    head = pb.RawImage(width=width, height=height, channels=channels).SerializeToString()
    raw = [head, _delimited(_PIXELS, pixels.nbytes), pixels]
    return [_delimited(_RAW, _size(raw)), *raw]


def encoded_parts(data: bytes) -> ImageParts:
    """An Image message holding an encoded file, in wire form (parts)."""
    return [_delimited(_ENCODED, len(data)), data]


def _size(parts: ImageParts) -> int:
    return sum(memoryview(p).nbytes for p in parts)


def frame_response(head: Any, field: str, images: list[ImageParts], max_bytes: int) -> Serialized:
    """A response in wire form: the message `head` (every field but the images) followed by `images` as elements of
    its repeated Image field `field`; refused (RESOURCE_EXHAUSTED) before any pixel is copied when it would be over
    `max_bytes`."""
    number = head.DESCRIPTOR.fields_by_name[field].number
    parts = [head.SerializeToString()]
    for image in images:
        parts += [_delimited(number, _size(image)), *image]
    size = _size(parts)
    if size > max_bytes:
        raise over_limit("output", f"the response would be {size / 2**20:.1f} MiB, over this server's "
                                   f"{max_bytes / 2**20:g} MiB (--max-message-mb); ask for fewer images, or PNG/JPEG "
                                   "instead of RAW")
    return Serialized(b"".join(parts), len(images))


def decode_image_message(img: pb.Image) -> np.ndarray:
    """A server's output Image -> uint8 [H, W, C] (client side: the server's images are trusted in size)."""
    if img.WhichOneof("data") == "raw":
        r = img.raw
        return np.frombuffer(r.pixels, dtype=np.uint8).reshape(r.height, r.width, r.channels)
    return decode_image_bytes(img.encoded, name="response image")
