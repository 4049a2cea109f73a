"""Image codecs shared by the CLI and the server: encoded bytes <-> uint8 [H, W, C], the fast library for each case.

Chosen by measurement (benchmarks/codecs.py, results in benchmarks/results/codecs_*): PNG is written by fpng
(~10x Pillow's level-1 encoder, lossless, ~20% more bytes) and 8-bit PNG read by pyspng; JPEG is read and written
by simplejpeg (libjpeg-turbo). Pillow stays for every other format and mode (16-bit, palette, transparency
chunks, CMYK, GIF, TIFF, WebP, ...) and whenever a fast library is not installed, so every path gives the same
pixels: lossless formats decode identically, JPEG within libjpeg-turbo's own rounding.

Sizes are read from the header and checked against `max_pixels` before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import io
import struct
import warnings
from functools import cache
from typing import Any

import numpy as np

from alae_rt.errors import InputError

# Bounds a decoded image before its pixels are read (decompression bombs); a 64-megapixel photo passes.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
DEFAULT_JPEG_QUALITY = 90
# Pillow's PNG level when fpng is missing: several times faster than the default 6 for a few percent more bytes.
PNG_COMPRESS_LEVEL = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


@cache
def _fast(name: str) -> Any:
    """The fast codec module `name` (fpng, pyspng, simplejpeg), or None where it is not installed."""
    try:
        return __import__(name)
    except ImportError:
        return None


def fast_codecs() -> dict[str, bool]:
    """Which fast codec libraries this install has (the rest falls back to Pillow)."""
    return {name: _fast(name) is not None for name in ("fpng", "pyspng", "simplejpeg")}


# ---- decode ---------------------------------------------------------------------------------------------------


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> np.ndarray:
    """Encoded bytes (PNG, JPEG, BMP, WebP, TIFF, GIF, ...) -> uint8 [H, W, C] with C = 1 (grey), 3 (RGB) or
    4 (RGBA). Errors (InputError) name `name`: unreadable or corrupt data, or more pixels than `max_pixels`."""
    if data[:8] == PNG_SIGNATURE:
        header = _png_header(data)
        if header is not None:
            width, height, fast = header
            _check_pixels(width, height, max_pixels, name)
            if fast and _fast("pyspng") is not None:
                return _decode_fast(lambda: _fast("pyspng").load(data), name, (height, width))
    elif data[:3] == JPEG_SIGNATURE and _fast("simplejpeg") is not None:
        sj = _fast("simplejpeg")
        try:
            height, width, colorspace, _ = sj.decode_jpeg_header(data)
        except ValueError:
            colorspace = None  # Pillow reads what libjpeg-turbo's strict header parser refuses, or says why not
        else:
            _check_pixels(width, height, max_pixels, name)
            if colorspace in ("RGB", "YCbCr", "Gray"):
                space = "GRAY" if colorspace == "Gray" else "RGB"
                return _decode_fast(lambda: sj.decode_jpeg(data, colorspace=space), name, (height, width))
    return _decode_pillow(io.BytesIO(data), name, max_pixels)


def read_file(path, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """An image file -> uint8 [H, W, C] (see decode_image)."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_image(data, max_pixels, name or str(path))


def _check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    if width < 1 or height < 1:
        raise InputError(f"{name}: corrupt or truncated image (header says {width}x{height} pixels)")
    if width * height > max_pixels:
        raise InputError(f"{name}: {width}x{height} pixels is over the limit of {max_pixels}")


def _png_header(data: bytes) -> tuple[int, int, bool] | None:
    """(width, height, whether the fast 8-bit decoder applies) from a PNG's IHDR; None when it is unreadable.

    The fast path takes 8-bit grey, RGB and RGBA without a tRNS chunk: there pyspng gives what Pillow gives.
    """
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    idat = data.find(b"IDAT")
    plain = depth == 8 and color in (0, 2, 6) and b"tRNS" not in data[: idat if idat > 0 else len(data)]
    return width, height, plain


def _decode_fast(decode, name: str, shape: tuple[int, int]) -> np.ndarray:
    try:
        arr = decode()
    except Exception as exc:  # noqa: BLE001 - the libraries raise assorted types for corrupt data
        raise InputError(f"{name}: corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8 or arr.shape[:2] != shape:
        raise InputError(f"{name}: corrupt or truncated image (decoded {arr.dtype} {list(arr.shape)})")
    return arr


def _decode_pillow(source, name: str, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # PIL's own bomb warning fires on open; the explicit limit below is the check that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
        with img:
            # The header gives the size before any pixel is decoded.
            _check_pixels(img.width, img.height, max_pixels, name)
            img.load()
            return _pil_to_array(img)
    except UnidentifiedImageError:
        raise InputError(f"{name}: not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{name}: corrupt or truncated image ({exc})") from None


def _pil_to_array(img) -> np.ndarray:
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit grey
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        return np.clip(arr + 0.5, 0, 255).astype(np.uint8)[:, :, None]
    if img.mode == "L":
        return np.array(img, dtype=np.uint8)[:, :, None]
    target = "RGBA" if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info else "RGB"
    return np.array(img if img.mode == target else img.convert(target), dtype=np.uint8)


# ---- encode ---------------------------------------------------------------------------------------------------


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, C], C in 1, 3, 4 -> PNG bytes (fpng for RGB/RGBA, Pillow otherwise)."""
    image = _hwc(image)
    fpng = _fast("fpng")
    if fpng is not None and image.shape[2] in (3, 4):
        return fpng.from_ndarray(np.ascontiguousarray(image))
    return _encode_pillow(image, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def encode_jpeg(image: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """uint8 [H, W, C], C in 1, 3 -> JPEG bytes at `quality` (4:2:0 chroma, as Pillow writes by default)."""
    image = _hwc(image)
    if image.shape[2] == 4:
        raise InputError("JPEG has no alpha channel; write PNG for RGBA images")
    sj = _fast("simplejpeg")
    if sj is not None:
        grey = image.shape[2] == 1
        return sj.encode_jpeg(np.ascontiguousarray(image), quality=int(quality), colorspace="GRAY" if grey else "RGB",
                              colorsubsampling="Gray" if grey else "420")
    return _encode_pillow(image, format="JPEG", quality=int(quality))


def _hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(f"expected a uint8 image [H, W, C] with C in 1, 3, 4, got {image.dtype} {list(image.shape)}")
    return image


def _encode_pillow(image: np.ndarray, **save: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[:, :, 0] if image.shape[2] == 1 else image)).save(buf, **save)
    return buf.getvalue()
