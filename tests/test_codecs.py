"""alae_rt.codecs: the fast paths give Pillow's pixels (lossless: exactly; JPEG: within libjpeg-turbo's rounding),
sizes are checked from the header before decoding, and every bad input is an InputError naming the image."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from helpers import FACES128, FACES1024, require
from PIL import Image, ImageOps

from alae_rt import InputError, codecs

JPEG_MIN_PSNR_DB = 40.0  # two libjpeg-turbo decoders of the same file, or a q90 re-encode, agree at least this well


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _pillow(data: bytes) -> np.ndarray:
    return codecs._decode_pillow(io.BytesIO(data), "reference", codecs.DEFAULT_MAX_PIXELS)


def _save(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def faces() -> list[bytes]:
    files = sorted(require(FACES128).glob("*.png"))[:3] + sorted(require(FACES1024).glob("*.png"))[:1]
    return [f.read_bytes() for f in files]


def test_the_fast_libraries_are_installed():
    assert codecs.fast_codecs() == {"fpng": True, "pyspng": True, "simplejpeg": True}


def test_png_faces_decode_as_pillow_decodes_them(faces):
    for data in faces:
        fast = codecs.decode_image(data)
        np.testing.assert_array_equal(fast, _pillow(data))
        assert fast.dtype == np.uint8 and fast.shape[2] == 3


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16", "1"])
def test_every_png_mode_decodes_as_pillow_decodes_it(mode):
    """8-bit grey/RGB/RGBA take the fast path; the other modes Pillow's: the same pixels either way."""
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (13, 7), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (13, 7, 3), dtype=np.uint8)).convert(mode)  # odd sizes
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    np.testing.assert_array_equal(codecs.decode_image(buf.getvalue()), _pillow(buf.getvalue()))


def test_a_png_with_a_transparent_colour_keeps_pillow_s_alpha():
    arr = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    data = _save(arr, format="PNG", transparency=(0, 0, 0))
    out = codecs.decode_image(data)
    assert out.shape == (9, 11, 4)
    np.testing.assert_array_equal(out, _pillow(data))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_encode_round_trips_exactly(channels):
    arr = np.random.default_rng(channels).integers(0, 256, (17, 23, channels), dtype=np.uint8)
    data = codecs.encode_png(arr)
    assert data[:8] == codecs.PNG_SIGNATURE
    np.testing.assert_array_equal(_pillow(data), arr)
    np.testing.assert_array_equal(codecs.decode_image(data), arr)


def test_png_encode_of_a_face_round_trips_exactly(faces):
    arr = codecs.decode_image(faces[-1])  # 1024x1024
    np.testing.assert_array_equal(_pillow(codecs.encode_png(arr)), arr)


def test_jpeg_decode_agrees_with_pillow(faces):
    for data in faces:
        source = codecs.decode_image(data)
        jpeg = _save(source, format="JPEG", quality=90)
        fast = codecs.decode_image(jpeg)
        assert fast.shape == source.shape
        assert _psnr(fast, _pillow(jpeg)) >= JPEG_MIN_PSNR_DB
    grey = _save(source[:, :, 0], format="JPEG", quality=90)
    out = codecs.decode_image(grey)
    assert out.shape == (*source.shape[:2], 1)
    assert _psnr(out, _pillow(grey)) >= JPEG_MIN_PSNR_DB


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_encode_is_close_to_the_source_and_to_pillow_s(faces, channels):
    source = codecs.decode_image(faces[0])[:, :, :channels]
    data = codecs.encode_jpeg(source, quality=90)
    assert data[:3] == codecs.JPEG_SIGNATURE
    decoded = _pillow(data)
    assert decoded.shape == source.shape
    assert _psnr(decoded, source) >= 35.0
    pillow = _pillow(_save(source[:, :, 0] if channels == 1 else source, format="JPEG", quality=90))
    assert _psnr(decoded, pillow) >= 35.0
    with pytest.raises(InputError, match="no alpha"):
        codecs.encode_jpeg(np.zeros((4, 4, 4), np.uint8))


def test_without_the_fast_libraries_pillow_gives_the_same_pixels(faces, monkeypatch):
    source = codecs.decode_image(faces[0])
    jpeg = codecs.encode_jpeg(source)
    fast_png, fast_jpeg = codecs.decode_image(faces[0]), codecs.decode_image(jpeg)
    monkeypatch.setattr(codecs, "_fast", lambda name: None)
    assert codecs.fast_codecs() == {"fpng": False, "pyspng": False, "simplejpeg": False}
    np.testing.assert_array_equal(codecs.decode_image(faces[0]), fast_png)
    assert _psnr(codecs.decode_image(jpeg), fast_jpeg) >= JPEG_MIN_PSNR_DB
    np.testing.assert_array_equal(_pillow(codecs.encode_png(source)), source)
    assert _psnr(_pillow(codecs.encode_jpeg(source)), source) >= 35.0


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose data is a few bytes: a decompression bomb's shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return codecs.PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_sizes_are_checked_from_the_header_before_decoding():
    with pytest.raises(InputError, match=r"^face\.png: 100000x100000 pixels is over the limit of 1000000$"):
        codecs.decode_image(_png_claiming(100_000, 100_000), max_pixels=1_000_000, name="face.png")
    jpeg = _save(np.zeros((40, 30, 3), np.uint8), format="JPEG")
    with pytest.raises(InputError, match=r"30x40 pixels is over the limit of 1000"):
        codecs.decode_image(jpeg, max_pixels=1000, name="x")
    gif = _save(np.zeros((40, 30, 3), np.uint8), format="GIF")
    with pytest.raises(InputError, match=r"30x40 pixels is over the limit of 1000"):
        codecs.decode_image(gif, max_pixels=1000, name="x")


def test_corrupt_and_truncated_data_is_an_input_error_naming_the_image(faces):
    jpeg = _save(np.full((32, 32, 3), 100, np.uint8), format="JPEG")
    cases = {
        "truncated png": faces[0][: len(faces[0]) // 2],
        "png with a broken body": _png_claiming(64, 64),
        "truncated jpeg": jpeg[:40],
        "not an image": b"hello, world" * 10,
        "empty": b"",
    }
    for label, data in cases.items():
        with pytest.raises(InputError, match=rf"^{label}: (corrupt or truncated|not a readable) image"):
            codecs.decode_image(data, name=label)


def test_encoders_refuse_what_is_not_a_uint8_image():
    for bad in (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((2, 4, 4, 3), np.uint8)):
        with pytest.raises(InputError, match="expected a uint8 image"):
            codecs.encode_png(bad)


def _blocky(seed: int = 0) -> np.ndarray:
    """A 48x32 RGB image of 8x8 blocks: JPEG keeps it within a level or two, and every turn of it differs."""
    arr = np.random.default_rng(seed).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    return np.kron(arr, np.ones((8, 8, 1), np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_the_exif_orientation_is_applied_as_pillow_s_exif_transpose_does(fmt, monkeypatch):
    """A phone photo stored on its side comes out upright, on the fast paths (JPEG, PNG) and on Pillow's alike."""
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(codecs, "_fast", lambda name: None)
        for orientation in range(1, 9):
            exif = Image.Exif()
            exif[0x0112] = orientation
            data = _save(_blocky(), format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
            got = codecs.decode_image(data)
            ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
            assert got.shape == ref.shape == ((48, 32, 3) if orientation < 5 else (32, 48, 3))
            assert np.abs(got.astype(int) - ref).max() <= (2 if fmt == "JPEG" else 0), (fast, orientation)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """An 8x8 JPEG whose frame header says width x height: libjpeg fills the missing blocks with grey."""
    data = bytearray(_save(np.full((8, 8, 3), 90, np.uint8), format="JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_jpeg_claiming_more_pixels_than_its_bytes_can_hold_is_truncated(monkeypatch):
    data = _jpeg_claiming(4000, 4000)
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(codecs, "_fast", lambda name: None)
        with pytest.raises(InputError, match=r"^x: corrupt or truncated image \(the header says 4000x4000 pixels"):
            codecs.decode_image(data, name="x")
        with pytest.raises(InputError, match="corrupt or truncated"):
            codecs.image_size(data, name="x")
    assert codecs.decode_image(_jpeg_claiming(8, 8)).shape == (8, 8, 3)


def _gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(_save(np.zeros((1, 1), np.uint8), format="GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen: the size Pillow reports
    return bytes(data)


def test_over_the_limit_is_said_once_in_our_words_whichever_decoder_reads_the_header():
    bmp = _save(np.zeros((40, 50, 3), np.uint8), format="BMP")  # Pillow's path
    with pytest.raises(InputError, match=r"^x: 50x40 pixels is over the limit of 1000$"):
        codecs.decode_image(bmp, max_pixels=1000, name="x")
    # Past ~179 M pixels Pillow refuses on open ("decompression bomb"): the message is still ours.
    for decode in (codecs.decode_image, codecs.image_size):
        with pytest.raises(InputError, match=r"^x: 400000000 pixels is over the limit of 1000000$"):
            decode(_gif_claiming(20000, 20000), max_pixels=1_000_000, name="x")
        pillow_limit = 2 * Image.MAX_IMAGE_PIXELS
        with pytest.raises(InputError, match=rf"^x: 400000000 pixels is over the limit of {pillow_limit}$"):
            decode(_gif_claiming(20000, 20000), max_pixels=10**9, name="x")


def test_image_size_reads_the_header_only():
    arr = np.zeros((40, 30, 3), np.uint8)
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        assert codecs.image_size(_save(arr, format=fmt)) == (30, 40), fmt
    assert codecs.image_size(_png_claiming(5000, 4000), max_pixels=20_000_000) == (5000, 4000)  # body never read
    with pytest.raises(InputError, match="5000x4000 pixels is over the limit of 1000"):
        codecs.image_size(_png_claiming(5000, 4000), max_pixels=1000, name="x")
    with pytest.raises(InputError, match="not a readable image"):
        codecs.image_size(b"hello" * 10)


def test_an_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (5, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    np.testing.assert_array_equal(codecs.decode_image(buf.getvalue()), np.asarray(frames[0]))
