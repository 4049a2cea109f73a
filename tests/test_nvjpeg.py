"""JPEG on the GPU (alae_rt.nvjpeg) against the CPU codec, and its header parsing and fallback on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import FACES128, FACES1024, require

from alae_rt import InputError, codecs, nvjpeg

MIN_PSNR_DB = 40.0  # the two codecs agree at least this well: one file decoded by both, or their two files
MAX_QUALITY_GAP_DB = 2.0  # the GPU's JPEG of a picture is at most this much less faithful than the CPU's


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    files = sorted(require(FACES128).glob("*.png"))[:4]
    return np.stack([codecs.decode_image(f.read_bytes()) for f in files])  # [4, 128, 128, 3]


def test_decodable_takes_upright_grey_and_colour_jpegs(faces):
    for channels in (1, 3):
        assert nvjpeg.decodable(codecs.encode_jpeg(faces[0, :100, :60, :channels]))
    assert not nvjpeg.decodable(codecs.encode_png(faces[0]))
    assert not nvjpeg.decodable(codecs.JPEG_SIGNATURE + b"\x00" * 10)
    assert not nvjpeg.decodable(codecs.encode_jpeg(faces[0])[:20])  # cut before the frame header
    whole = codecs.encode_jpeg(faces[0])
    assert not nvjpeg.decodable(whole[: len(whole) // 2])  # cut short: the CPU codec names it, nvJPEG might not
    assert nvjpeg.decodable(whole + b"\0" * 7)  # zero padding after the end-of-image marker
    rotated = _with_orientation(codecs.encode_jpeg(faces[0]), 6)
    assert codecs.jpeg_header(rotated)[4] == 6 and not nvjpeg.decodable(rotated)


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF block whose Orientation tag is `orientation`, right after SOI."""
    import struct

    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    tiff = b"II*\0" + struct.pack("<I", 8) + ifd
    body = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def test_not_available_on_the_cpu():
    assert not nvjpeg.available(torch.device("cpu"))


@pytest.mark.gpu
def test_gpu_encode_agrees_with_the_cpu_codec():
    """At the size the server sends (1024x1024 faces). Two JPEG encoders differ in their chroma filters and DCT
    rounding: on 128x128 faces, where every pixel is detail, even Pillow's 4:4:4 and 4:2:0 files of one face
    differ at 38-40 dB (nvJPEG against the CPU codec: 38.9 dB on an H200), while at 1024x1024 they agree at 45-51."""
    files = sorted(require(FACES1024).glob("*.png"))[:2]
    faces = np.stack([codecs.decode_image(f.read_bytes()) for f in files])  # [2, 1024, 1024, 3]
    gpu = nvjpeg.encode(torch.from_numpy(faces).cuda(), quality=90)
    assert len(gpu) == len(faces)
    for data, face in zip(gpu, faces):
        decoded = codecs.decode_image(data)
        assert decoded.shape == face.shape
        cpu = codecs.decode_image(codecs.encode_jpeg(face, 90))
        agree, gpu_db, cpu_db = _psnr(decoded, cpu), _psnr(decoded, face), _psnr(cpu, face)
        message = f"GPU vs CPU file {agree:.1f} dB; to the picture: GPU {gpu_db:.1f} dB, CPU {cpu_db:.1f} dB"
        assert agree >= MIN_PSNR_DB, message  # the two encoders' files, decoded, agree
        assert gpu_db >= cpu_db - MAX_QUALITY_GAP_DB, message  # and the GPU's is as faithful to the picture


@pytest.mark.gpu
def test_gpu_decode_agrees_with_the_cpu_codec_in_order(faces):
    files = [codecs.encode_jpeg(f, 90) for f in faces] + [codecs.encode_jpeg(faces[0, :, :, :1], 90)]
    out = nvjpeg.decode(files, torch.device("cuda"), 10**6, [f"images[{i}]" for i in range(len(files))])
    assert [tuple(t.shape) for t in out] == [(128, 128, 3)] * 4 + [(128, 128, 1)]
    for t, data in zip(out, files):
        assert t.is_cuda and t.dtype == torch.uint8
        assert _psnr(t.cpu().numpy(), codecs.decode_image(data)) >= MIN_PSNR_DB


@pytest.mark.gpu
def test_gpu_decode_names_a_corrupt_or_oversized_file(faces):
    good = codecs.encode_jpeg(faces[0])
    names = ["images[0]", "images[1]"]
    with pytest.raises(InputError, match=r"^images\[1\]: corrupt or truncated"):
        nvjpeg.decode([good, good[: len(good) // 2]], torch.device("cuda"), 10**6, names)
    with pytest.raises(InputError, match=r"^images\[0\]: 128x128 pixels is over the limit of 1000"):
        nvjpeg.decode([good, good], torch.device("cuda"), 1000, names)
    # the device still works after a failed batch
    assert len(nvjpeg.decode([good], torch.device("cuda"), 10**6, names[:1])) == 1
