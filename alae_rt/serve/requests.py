"""Request messages -> Runtime arguments: what is the transport's own (which proto fields are set, the server's
limits, images and tensors from bytes), and the one table that turns a Runtime argument name in an InputError
into the request field it came from. Every rule about the values themselves is the Runtime's."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
import torch
from google.protobuf.message import DecodeError
from torch import Tensor

from alae_rt import nvjpeg
from alae_rt.errors import InputError
from alae_rt.images import decode_image_bytes, image_to_tensor
from alae_rt.runtime import Runtime
from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve.config import ServeConfig
from alae_rt.serve.wire import (
    RequestError,
    clip,
    image_pixels,
    image_to_array,
    invalid,
    over_limit,
    quote,
    tensor_to_array,
    tensor_to_latents,
)
from alae_rt.streams import device_stream

MAX_EDITS = 64  # directions per Edit call
NOISE_MODES = {pb.NOISE_MODE_UNSPECIFIED: "const", pb.NOISE_MODE_CONST: "const", pb.NOISE_MODE_RANDOM: "random",
               pb.NOISE_MODE_NONE: "none"}
EDIT_MODES = {pb.EDIT_MODE_UNSPECIFIED: "add", pb.EDIT_MODE_ADD: "add", pb.EDIT_MODE_SET: "set"}
# Runtime argument names -> request fields, for calls whose names differ (the others are named alike).
PAIR_FIELDS = {"w_a": "a", "w_b": "b"}


class BadMessage:
    """What the server's request parser gives for bytes that are not a valid request message (corrupt protobuf):
    the call then gets INVALID_ARGUMENT, counted and logged like any other bad request."""

    def __init__(self, kind: str, error: Exception):
        self.message = f"request: not a valid {kind} message ({clip(parse_problem(error))})"


def parse_problem(error: Exception) -> str:
    """What a parser's exception says about the bytes, in words: never the exception's Python type."""
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text at byte {error.start}"
    if isinstance(error, RecursionError):
        return "nested too deeply"
    text = " ".join(str(error).split())  # one line
    if isinstance(error, DecodeError):  # "Error parsing message with type '...': Wire format was corrupt"
        text = text.rpartition(": ")[2]
    return text or "unreadable"


def tolerant_parser(message_class: Any) -> Any:
    """message_class.FromString that returns a BadMessage instead of raising (gRPC would answer UNKNOWN, uncounted)."""
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError and whatever else the protobuf runtime raises
            return BadMessage(message_class.DESCRIPTOR.full_name, exc)

    return parse


def source_fields(field: str) -> dict[str, str]:
    """A LatentSource's seeds and psi go to Runtime.seed_styles(seeds, truncation_psi)."""
    return {"seeds": f"{field}.seeds", "truncation_psi": f"{field}.truncation_psi"}


# ---- Runtime errors -> request errors ----------------------------------------------------------------------------


def request_error(exc: InputError, fields: Mapping[str, str] | None = None) -> RequestError:
    """An InputError of the Runtime -> INVALID_ARGUMENT whose message names request fields: each Runtime
    argument name in `fields` ("w_b") is replaced by its request field ("b") wherever the message names it."""
    message = str(exc)
    if fields:
        names = "|".join(re.escape(name) for name in sorted(fields, key=len, reverse=True))
        message = re.sub(rf"(?<![\w.])({names})(?!\w)", lambda m: fields[m.group(1)], message)
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


@contextmanager
def runtime_fields(fields: Mapping[str, str]) -> Iterator[None]:
    """Runtime calls inside name request fields in their errors (see request_error)."""
    try:
        yield
    except InputError as exc:
        raise request_error(exc, fields) from None


# ---- what a request asks for ----------------------------------------------------------------------------------


def noise_args(noise: pb.Noise) -> tuple[str, int | None]:
    """A Noise message -> the Runtime's (mode, seed)."""
    if noise.mode not in NOISE_MODES:
        raise invalid("noise.mode", f"unknown mode {noise.mode}")
    if noise.HasField("seed") and noise.mode != pb.NOISE_MODE_RANDOM:
        raise invalid("noise.seed", "only applies to NOISE_MODE_RANDOM")
    return NOISE_MODES[noise.mode], noise.seed if noise.HasField("seed") else None


def check_output(out: pb.OutputOptions) -> None:
    if out.format not in pb.ImageFormat.values():
        raise invalid("output.format", f"unknown format {out.format}")
    if out.jpeg_quality > 100:
        raise invalid("output.jpeg_quality", f"{out.jpeg_quality} is out of range 1..100 (0: 90)")
    if out.skip_images and not out.return_latents:
        raise invalid("output.skip_images", "needs return_latents (the response would be empty)")


def check_count(n: int, field: str, cfg: ServeConfig, what: str = "images") -> None:
    if n == 0:
        raise invalid(field, "empty batch")
    if n > cfg.max_images:
        raise over_limit(field, f"{n} {what}; this server takes at most {cfg.max_images} per request "
                                "(--max-images)")


def source_kind(src: pb.LatentSource, field: str) -> str:
    """Which one of images, latents or seeds a LatentSource gives."""
    given = [k for k, present in (("images", len(src.images) > 0), ("latents", src.HasField("latents")),
                                  ("seeds", len(src.seeds) > 0)) if present]
    if len(given) != 1:
        what = "nothing" if not given else " and ".join(given)
        raise invalid(field, f"give exactly one of images, latents or seeds (got {what})")
    if src.HasField("truncation_psi") and given[0] != "seeds":
        raise invalid(f"{field}.truncation_psi", "only applies to seeds")
    return given[0]


def generation_args(req: pb.GenerateRequest, rt: Runtime) -> tuple[float | None, int | None]:
    """A GenerateRequest's (truncation_psi, truncation_cutoff), checked by the Runtime before any work."""
    if (len(req.seeds) > 0) == req.HasField("z"):
        raise invalid("seeds", "give exactly one of seeds and z")
    psi = req.truncation_psi if req.HasField("truncation_psi") else None
    cutoff = req.truncation_cutoff if req.HasField("truncation_cutoff") else None
    rt.check_psi(psi)
    rt.check_cutoff(cutoff, "truncation_cutoff")
    return psi, cutoff


def edit_args(req: pb.EditRequest, rt: Runtime, cfg: ServeConfig) -> tuple[list[tuple[Any, float]], str,
                                                                           list[int] | None]:
    """An EditRequest's (edits, mode, layers) for Runtime.edit. Directions come by name (of those the server
    loaded: never a path from the wire) or as a vector."""
    if not req.edits:
        raise invalid("edits", "no edits given")
    if len(req.edits) > MAX_EDITS:
        raise invalid("edits", f"{len(req.edits)} edits; at most {MAX_EDITS} per request")
    s = rt.config.num_styles
    if len(req.layers) > s:
        raise invalid("layers", f"{len(req.layers)} entries; there are {s} style inputs")
    if req.mode not in EDIT_MODES:
        raise invalid("mode", f"unknown edit mode {req.mode}")
    layers = list(req.layers) or None
    rt.check_layers(layers)
    d, limit = rt.config.latent_size, cfg.max_strength
    edits: list[tuple[Any, float]] = []
    for i, e in enumerate(req.edits):
        f = f"edits[{i}]"
        which = e.WhichOneof("direction")
        if which == "name":
            if e.name not in rt.directions:
                known = ", ".join(sorted(rt.directions)) or "none: the server was started without directions"
                raise invalid(f"{f}.name", f"unknown direction {quote(e.name)}; known: {known}")
            key: Any = e.name
        elif which == "vector":
            arr = tensor_to_array(e.vector, f"{f}.vector")
            if arr.shape not in ((d,), (s, d)):
                raise invalid(f"{f}.vector.shape", f"{list(arr.shape)}; expected [{d}] or [{s}, {d}]")
            key = torch.from_numpy(arr)
        else:
            raise invalid(f, "no direction (set name or vector)")
        if not (math.isfinite(e.strength) and abs(e.strength) <= limit):
            raise invalid(f"{f}.strength", f"{e.strength} is out of range [-{limit:g}, {limit:g}]")
        edits.append((key, float(e.strength)))
    return edits, EDIT_MODES[req.mode], layers


def check_steps(steps: int, cfg: ServeConfig) -> None:
    if not 2 <= steps <= cfg.max_steps:
        raise invalid("steps", f"{steps} is out of range 2..{cfg.max_steps}")


# ---- tensors from messages (in the worker pool) -----------------------------------------------------------------
# Each is made on its thread's own CUDA stream and is complete when returned, for the compute thread's stream
# (alae_rt.streams.device_stream).


def latents_tensor(t: pb.Tensor, field: str, rt: Runtime, cfg: ServeConfig, allow_styles: bool = True) -> Tensor:
    """A Tensor message -> w [n, D] (or styles [n, 2L, D]) on the Runtime's device."""
    arr = tensor_to_latents(t, field, rt.config.latent_size, rt.config.num_styles, allow_styles)
    check_count(arr.shape[0], f"{field}.shape", cfg, "latents")
    with device_stream(rt.device):
        return torch.from_numpy(arr).to(rt.device, rt.dtype)


def image_sizes(images: Sequence[pb.Image], field: str, cfg: ServeConfig) -> list[int]:
    """Each image's pixels from its header, before any is decoded: each within --max-pixels, all of them together
    within --max-request-pixels."""
    sizes = [image_pixels(img, f"{field}[{i}]", cfg.max_pixels) for i, img in enumerate(images)]
    if sum(sizes) > cfg.max_request_pixels:
        raise over_limit(field, f"{len(sizes)} images of {sum(sizes)} pixels in all; this server decodes at most "
                                f"{cfg.max_request_pixels} pixels per request (--max-request-pixels)")
    return sizes


def image_tensor(img: pb.Image, field: str, rt: Runtime, cfg: ServeConfig, decode=decode_image_bytes) -> Tensor:
    """One Image message -> the encoder's input float [C, R, R] on the Runtime's device. The uint8 pixels go there
    (a quarter of the float's bytes) and are prepared there; on a GPU a JPEG file is decoded there too (nvJPEG), so
    its pixels never touch host memory. Other files are read by `decode` (wire.image_to_array)."""
    try:
        with device_stream(rt.device):
            if img.WhichOneof("data") == "encoded" and nvjpeg.available(rt.device) and nvjpeg.decodable(img.encoded):
                (arr,) = nvjpeg.decode([img.encoded], rt.device, cfg.max_pixels, [f"{field}.encoded"])  # [H, W, C]
            else:
                arr = image_to_array(img, field, cfg.max_pixels, decode)  # [H, W, C] on the host
            return image_to_tensor(arr, rt.config.resolution, rt.config.channels, field, rt.device)  # [C, R, R]
    except InputError as exc:
        raise request_error(exc) from None


def images_tensor(xs: Sequence[Tensor], rt: Runtime) -> Tensor:
    """The prepared images, each [C, R, R] -> the encoder's input [n, C, R, R] on the Runtime's device."""
    with device_stream(rt.device):
        x = xs[0][None] if len(xs) == 1 else torch.stack(list(xs))  # one image: a view, not a copy
        return x.to(rt.device, rt.dtype)
