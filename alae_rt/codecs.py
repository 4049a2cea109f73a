"""Image codecs shared by the CLI and the server: encoded bytes <-> uint8 [H, W, C], the fast library for each case.

Chosen by measurement (benchmarks/codecs.py, results in benchmarks/results/codecs_*): PNG is written by fpng
(~10x Pillow's level-1 encoder, lossless, ~20% more bytes) and 8-bit PNG read by pyspng; JPEG is read and written
by simplejpeg (libjpeg-turbo). Pillow stays for every other format and mode (16-bit, palette, transparency
chunks, CMYK, GIF, TIFF, WebP, ...) and whenever a fast library is not installed, so every path gives the same
pixels: lossless formats decode identically, JPEG within libjpeg-turbo's own rounding.

Sizes are read from the header and checked against `max_pixels` before any pixel is decoded (decompression bombs);
a Huffman-coded JPEG whose header claims more 8x8 blocks than its bytes can code (at least a bit each) is refused as
truncated, unread. What a decoded image is, whichever path decodes it:
- the EXIF orientation is applied (JPEG APP1, PNG eXIf, what Pillow reads for other formats): a phone photo comes
  out upright, as a viewer shows it;
- alpha is kept (RGBA; grey with alpha becomes RGBA): the model's input preparation composites it on white
  (alae_rt.images);
- an animated or multi-page file (GIF, TIFF, WebP, APNG) gives its first frame.
"""

from __future__ import annotations

import importlib
import io
import re
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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
EXIF_ORIENTATION = 0x0112
# JPEG start-of-frame markers, and those of them whose scans are Huffman-coded (at least one bit per 8x8 block)
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
JPEG_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2, 0xC3}


@cache
def _fast(name: str) -> Any:
    """The fast codec module `name` (fpng, pyspng, simplejpeg), or None where it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def fast_codecs() -> dict[str, bool]:
    """Which fast codec libraries this install has (the rest falls back to Pillow)."""
    return {name: _fast(name) is not None for name in ("fpng", "pyspng", "simplejpeg")}


# ---- decode ---------------------------------------------------------------------------------------------------


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> np.ndarray:
    """Encoded bytes (PNG, JPEG, BMP, WebP, TIFF, GIF, ...) -> uint8 [H, W, C] with C = 1 (grey), 3 (RGB) or
    4 (RGBA), upright by its EXIF orientation; a multi-frame file gives its first frame.
    Errors (InputError) name `name`: unreadable or corrupt data, or more pixels than `max_pixels`."""
    if data[:8] == PNG_SIGNATURE:
        header = _png_header(data)
        if header is not None:
            width, height, fast = header
            check_pixels(width, height, max_pixels, name)
            if fast and _fast("pyspng") is not None:
                return _decode_fast(lambda: _fast("pyspng").load(data), name, (height, width))
    elif data[:3] == JPEG_SIGNATURE:
        frame = jpeg_header(data)
        orientation = 1
        if frame is not None:
            sof, width, height, _, orientation = frame
            check_pixels(width, height, max_pixels, name)
            check_jpeg_length(sof, width, height, len(data), name)
        sj = _fast("simplejpeg")
        if sj is not None:
            try:
                height, width, colorspace, _ = sj.decode_jpeg_header(data)
            except ValueError:
                colorspace = None  # Pillow reads what libjpeg-turbo's strict header parser refuses, or says why not
            else:
                check_pixels(width, height, max_pixels, name)
                if colorspace in ("RGB", "YCbCr", "Gray"):
                    space = "GRAY" if colorspace == "Gray" else "RGB"
                    arr = _decode_fast(lambda: sj.decode_jpeg(data, colorspace=space), name, (height, width))
                    return _orient(arr, orientation)
    return _decode_pillow(io.BytesIO(data), name, max_pixels)


def image_size(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> tuple[int, int]:
    """(width, height) of encoded bytes from their header, checked against `max_pixels`, without decoding a pixel
    (what a server budgets before it decodes); errors are decode_image's."""
    if data[:8] == PNG_SIGNATURE and (header := _png_header(data)) is not None:
        width, height = header[:2]
    elif data[:3] == JPEG_SIGNATURE and (frame := jpeg_header(data)) is not None:
        sof, width, height, _, _ = frame
        check_pixels(width, height, max_pixels, name)
        check_jpeg_length(sof, width, height, len(data), name)
    else:
        with _pillow_errors(name, max_pixels), _open_pillow(io.BytesIO(data)) as img:
            width, height = img.size
    check_pixels(width, height, max_pixels, name)
    return width, height


def read_file(path, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """An image file -> uint8 [H, W, C] (see decode_image)."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_image(data, max_pixels, name or str(path))


def check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    """Refuse an image whose header says more than `max_pixels` pixels, or none (InputError naming `name`)."""
    if width < 1 or height < 1:
        raise InputError(f"{name}: corrupt or truncated image (header says {width}x{height} pixels)")
    if width * height > max_pixels:
        raise InputError(f"{name}: {width}x{height} pixels is over the limit of {max_pixels}")


def jpeg_header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(start-of-frame marker, width, height, components, EXIF orientation) from a JPEG's segments before its first
    scan; None when they are unreadable (Pillow then says why)."""
    pos, frame, orientation, exif_seen = 2, None, 1, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: the header is over
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        body = data[pos + 4:pos + 2 + length]
        if length < 2 or len(body) < length - 2:
            return None
        if marker in JPEG_SOF and frame is None and len(body) >= 6:
            height, width = struct.unpack_from(">HH", body, 1)
            frame = (marker, width, height, body[5])
        elif marker == 0xE1 and not exif_seen and body[:6] == b"Exif\0\0":  # the first EXIF block, as Pillow reads
            exif_seen = True
            orientation = _exif_orientation(body[6:])
        pos += 2 + length
    return None if frame is None else (*frame, orientation)


def check_jpeg_length(sof: int, width: int, height: int, size: int, name: str) -> None:
    """A Huffman-coded scan spends at least one bit on each 8x8 block, even a flat one: a header claiming more blocks
    than the file's bits is a truncated file (or a bomb), refused before decoding - libjpeg would fill the missing
    blocks with grey."""
    blocks = -(-width // 8) * -(-height // 8)
    if sof in JPEG_HUFFMAN_SOF and 8 * size < blocks:
        raise InputError(f"{name}: corrupt or truncated image (the header says {width}x{height} pixels, more than "
                         f"{size} bytes of JPEG can hold)")


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (1..8) of an EXIF block's TIFF structure; 1 (upright) when absent or unreadable."""
    order = {b"II*\0": "<", b"MM\0*": ">"}.get(tiff[:4])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for k in range(count):
            tag, kind = struct.unpack_from(order + "HH", tiff, ifd + 2 + 12 * k)
            if tag == EXIF_ORIENTATION:
                (value,) = struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * k + 8)
                return value if kind == 3 and 1 <= value <= 8 else 1  # 3: SHORT
    except struct.error:
        return 1
    return 1


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """uint8 [H, W, C] as stored -> upright, for an EXIF orientation (what PIL.ImageOps.exif_transpose does)."""
    if orientation in (5, 6, 7, 8):
        arr = arr.transpose(1, 0, 2)  # 5: transpose; 6, 7, 8 as flips of it
        arr = {5: arr, 6: arr[:, ::-1], 7: arr[::-1, ::-1], 8: arr[::-1]}[orientation]
    elif orientation in (2, 3, 4):
        arr = {2: arr[:, ::-1], 3: arr[::-1, ::-1], 4: arr[::-1]}[orientation]
    else:
        return arr
    return np.ascontiguousarray(arr)


def _png_header(data: bytes) -> tuple[int, int, bool] | None:
    """(width, height, whether the fast 8-bit decoder applies) from a PNG's IHDR; None when it is unreadable.

    The fast path takes 8-bit grey, RGB and RGBA without a tRNS chunk or EXIF (eXIf, which may turn the image):
    there pyspng gives what Pillow gives.
    """
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    idat = data.find(b"IDAT")
    head = data[: idat if idat > 0 else len(data)]
    plain = depth == 8 and color in (0, 2, 6) and b"tRNS" not in head and b"eXIf" not in data
    return width, height, plain


def _decode_fast(decode, name: str, shape: tuple[int, int]) -> np.ndarray:
    try:
        arr = decode()
    except Exception as exc:  # noqa: BLE001 - the libraries raise assorted types for corrupt data
        raise InputError(f"{name}: corrupt or truncated image ({exc})") from None  # the library's words, no type
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8 or arr.shape[:2] != shape:
        raise InputError(f"{name}: corrupt or truncated image (decoded {arr.dtype} {list(arr.shape)})")
    return arr


def _open_pillow(source):
    from PIL import Image

    with warnings.catch_warnings():
        # PIL's own bomb warning fires on open; the explicit limit (check_pixels) is the check that counts.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source)


@contextmanager
def _pillow_errors(name: str, max_pixels: int) -> Iterator[None]:
    """Pillow's errors -> InputError naming the image; ours pass through as they are."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name}: not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as exc:
        # Pillow refuses on open what is over twice its MAX_IMAGE_PIXELS (~179 M pixels): ours is the message.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{found.group(1)} pixels" if found else "its size"
        limit = max_pixels if found is None or int(found.group(1)) > max_pixels else 2 * Image.MAX_IMAGE_PIXELS
        raise InputError(f"{name}: {pixels} is over the limit of {limit}") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise InputError(f"{name}: corrupt or truncated image ({exc})") from None


def _decode_pillow(source, name: str, max_pixels: int) -> np.ndarray:
    with _pillow_errors(name, max_pixels), _open_pillow(source) as img:
        # The header gives the size before any pixel is decoded.
        check_pixels(img.width, img.height, max_pixels, name)
        img.load()  # the first frame of an animated or multi-page file
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        return _orient(_pil_to_array(img), orientation if isinstance(orientation, int) else 1)


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
