"""JPEG on the GPU: nvJPEG through torchvision.io, batched, so that a JPEG request's pixels never touch host memory.

Used by the server when the model runs on CUDA and torchvision is installed (it is not a dependency: CPU installs
use alae_rt.codecs). Sizes are read from the JPEG header and checked before anything is decoded; a corrupt JPEG is
an InputError naming its field, found by decoding the batch's files one by one on the CPU once the batched GPU call
has failed, so that one bad file never poisons a batch or the device.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import cache

import torch
from torch import Tensor

from alae_rt import codecs
from alae_rt.errors import InputError

# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic); C4 (DHT), C8 (JPG), CC (DAC) are not.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


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


def jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG's start-of-frame segment, or None where there is none."""
    if data[:3] != codecs.JPEG_SIGNATURE:
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in _SOF:
            if i + 10 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height, data[i + 9]
        if marker == 0xDA or length < 2:  # start of scan before any frame header: not a JPEG we read
            return None
        i += 2 + length
    return None


def encode(images: Tensor, quality: int = codecs.DEFAULT_JPEG_QUALITY) -> list[bytes]:
    """uint8 [N, H, W, C] (C = 1 or 3) on a CUDA device -> one JPEG file each; only the encoded bytes leave the GPU."""
    tio = _torchvision_io()
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise InputError(f"JPEG needs uint8 [N, H, W, 1 or 3] images, got {images.dtype} {list(images.shape)}")
    chw = [img.permute(2, 0, 1).contiguous() for img in images]  # [C, H, W] each
    return [t.cpu().numpy().tobytes() for t in tio.encode_jpeg(chw, quality=int(quality))]


def decode(files: Sequence[bytes], device: torch.device, max_pixels: int, names: Sequence[str]) -> list[Tensor]:
    """JPEG files -> uint8 [H, W, C] tensors on `device` (C = 1 for grey files, else 3), decoded as one batch."""
    tio = _torchvision_io()
    modes = []
    for data, name in zip(files, names):
        size = jpeg_size(data)
        if size is None:
            raise InputError(f"{name}: corrupt or truncated image (no JPEG frame header)")
        width, height, components = size
        if width < 1 or height < 1:
            raise InputError(f"{name}: corrupt or truncated image (header says {width}x{height} pixels)")
        if width * height > max_pixels:
            raise InputError(f"{name}: {width}x{height} pixels is over the limit of {max_pixels}")
        modes.append(tio.ImageReadMode.GRAY if components == 1 else tio.ImageReadMode.RGB)
    try:
        out = []
        for mode in set(modes):  # decode_jpeg takes one mode per call: grey and colour files go separately
            idx = [i for i, m in enumerate(modes) if m == mode]
            data = [torch.frombuffer(bytearray(files[i]), dtype=torch.uint8) for i in idx]
            out += zip(idx, tio.decode_jpeg(data, mode=mode, device=device))
    except RuntimeError:
        for data, name in zip(files, names):  # which file: the CPU decoder names it (and raises InputError)
            codecs.decode_image(data, max_pixels, name)
        raise
    return [t.permute(1, 2, 0) for _, t in sorted(out, key=lambda pair: pair[0])]
