"""JPEG on the GPU: nvJPEG through torchvision.io, batched, so that a JPEG request's pixels never touch host memory.

Used by the server when the model runs on CUDA and torchvision is installed (it is not a dependency: CPU installs
use alae_rt.codecs). Sizes are read from the JPEG header and checked before anything is decoded; a corrupt JPEG is
an InputError naming its field, found by decoding the batch's files one by one on the CPU once the batched GPU call
has failed, so that one bad file never poisons a batch or the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch
from torch import Tensor

from alae_rt import codecs
from alae_rt.errors import InputError


@cache
def _torchvision_io():
    try:
        import torchvision.io as tio
    except Exception:  # noqa: BLE001 - a torchvision that does not match torch fails in assorted ways at import
        return None
    return tio if hasattr(tio, "encode_jpeg") and hasattr(tio, "decode_jpeg") else None


def available(device: torch.device) -> bool:
    """Whether JPEG can be encoded and decoded on `device` (a CUDA device with torchvision's nvJPEG)."""
    return torch.device(device).type == "cuda" and _torchvision_io() is not None


def encode(images: Tensor, quality: int = codecs.DEFAULT_JPEG_QUALITY) -> list[bytes]:
    """uint8 [N, H, W, C] (C = 1 or 3) on a CUDA device -> one JPEG file each; only the encoded bytes leave the GPU."""
    tio = _torchvision_io()
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise InputError(f"JPEG needs uint8 [N, H, W, 1 or 3] images, got {images.dtype} {list(images.shape)}")
    # torchvision's encoder (one for the process) orders its own stream against the stream that was current when it
    # was built, not the caller's, and older versions copy the files out on the default stream: every encode runs on
    # the default stream (which the server's threads, each on a stream of its own, leave free), and waits there.
    default = torch.cuda.default_stream(images.device)
    default.wait_stream(torch.cuda.current_stream(images.device))  # the caller's images are complete
    with torch.cuda.stream(default):
        chw = [img.permute(2, 0, 1).contiguous() for img in images]  # [C, H, W] each
        default.synchronize()  # older versions read their inputs without waiting for any stream
        return [t.cpu().numpy().tobytes() for t in tio.encode_jpeg(chw, quality=int(quality))]


def decodable(data: bytes) -> bool:
    """Whether nvJPEG decodes this file as alae_rt.codecs would: a JPEG with a readable frame header, grey or colour,
    stored upright (an EXIF-rotated photo is turned by the CPU codec)."""
    header = codecs.jpeg_header(data)
    return header is not None and header[3] in (1, 3) and header[4] == 1 and _complete(data)


def _complete(data: bytes) -> bool:
    """The file ends with JPEG's end-of-image marker (zero padding after it allowed). nvJPEG may decode a file cut
    short into grey rows without an error; the CPU codec refuses it, naming the file."""
    return data.rstrip(b"\0").endswith(b"\xff\xd9")


def decode(files: Sequence[bytes], device: torch.device, max_pixels: int, names: Sequence[str]) -> list[Tensor]:
    """JPEG files (see `decodable`) -> uint8 [H, W, C] tensors on `device` (C = 1 for grey files, else 3), decoded
    as one batch. Sizes are checked from the headers first, as alae_rt.codecs checks them."""
    tio = _torchvision_io()
    modes = []
    out = []
    for i, (data, name) in enumerate(zip(files, names)):
        header = codecs.jpeg_header(data)
        if header is None:
            raise InputError(f"{name}: corrupt or truncated image (no JPEG frame header)")
        sof, width, height, components, _ = header
        codecs.check_pixels(width, height, max_pixels, name)
        codecs.check_jpeg_length(sof, width, height, len(data), name)
        if _complete(data):
            modes.append(tio.ImageReadMode.GRAY if components == 1 else tio.ImageReadMode.RGB)
        else:  # the CPU codec decodes it (data after the last marker) or names it (cut short)
            modes.append(None)
            out.append((i, torch.from_numpy(codecs.decode_image(data, max_pixels, name)).to(device).permute(2, 0, 1)))
    try:
        for mode in set(modes) - {None}:  # decode_jpeg takes one mode per call: grey and colour files go separately
            idx = [i for i, m in enumerate(modes) if m == mode]
            data = [torch.frombuffer(bytearray(files[i]), dtype=torch.uint8) for i in idx]
            out += zip(idx, tio.decode_jpeg(data, mode=mode, device=device))
    except RuntimeError:
        for data, name in zip(files, names):  # which file: the CPU decoder names it (and raises InputError)
            codecs.decode_image(data, max_pixels, name)
        raise
    return [t.permute(1, 2, 0) for _, t in sorted(out, key=lambda pair: pair[0])]
