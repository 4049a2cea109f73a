"""Image reading (formats, corrupt and oversized files), the official preprocessing, grids."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from alae_rt import InputError
from alae_rt.images import decode_image_bytes, image_to_tensor, list_images, make_grid, read_image, save_image, to_uint8


def _png(img: Image.Image, path) -> str:
    img.save(path)
    return str(path)


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("L", 1), ("RGBA", 4), ("P", 3), ("LA", 4), ("I;16", 1)])
def test_read_image_modes(tmp_path, mode, channels):
    img = Image.new(mode, (5, 3), color=200 if mode in ("L", "P") else None)
    arr = read_image(_png(img, tmp_path / "x.png"))
    assert arr.shape == (3, 5, channels) and arr.dtype == np.uint8
    assert arr.flags.writeable


def test_read_jpeg_and_bytes(tmp_path, faces128):
    face = read_image(faces128 / "00000.png")
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format="JPEG", quality=95)
    decoded = decode_image_bytes(buf.getvalue())
    assert decoded.shape == face.shape
    assert np.abs(decoded.astype(int) - face.astype(int)).mean() < 4


def test_corrupt_truncated_and_missing_files(tmp_path, faces128):
    data = (faces128 / "00000.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.png: corrupt or truncated"):
        read_image(tmp_path / "cut.png")
    (tmp_path / "noise.png").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match=r"noise\.png: not a readable image"):
        read_image(tmp_path / "noise.png")
    with pytest.raises(InputError, match="no such image file"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(InputError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(InputError, match="request: not a readable image"):
        decode_image_bytes(b"12345", name="request")


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = _png(Image.new("L", (300, 200)), tmp_path / "big.png")
    with pytest.raises(InputError, match=r"300x200 pixels is over the limit of 50000"):
        read_image(path, max_pixels=50_000)
    # A compressed 'bomb': tiny file, huge header size.
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(InputError, match="over the limit"):
        decode_image_bytes(bomb.getvalue(), max_pixels=64 * 1024 * 1024)


def test_preprocessing_follows_the_official_order():
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    x = image_to_tensor(img, 8, 3)
    ref = torch.from_numpy(img[:, 10:50]).permute(2, 0, 1)[None].float() / 127.5 - 1  # centre crop to 40x40
    ref = torch.nn.functional.avg_pool2d(ref, 2)  # 40 -> 20
    ref = torch.nn.functional.avg_pool2d(ref, 2)  # 20 -> 10
    ref = torch.nn.functional.avg_pool2d(ref, 2)  # 10 -> 5: pooled while larger than the target, as officially
    ref = torch.nn.functional.adaptive_avg_pool2d(ref, (8, 8))[0]  # 5 -> 8
    torch.testing.assert_close(x, ref)
    grey = image_to_tensor(img, 8, 1)
    torch.testing.assert_close(grey, image_to_tensor(img, 8, 3).mean(0, keepdim=True), atol=1e-5, rtol=0)
    small = image_to_tensor(img[:4, :4], 8, 3)  # smaller than the model: adaptive pooling brings it up
    assert small.shape == (3, 8, 8)
    with pytest.raises(InputError, match=r"expected uint8 \[H, W, C\]"):
        image_to_tensor(img.astype(np.float32), 8, 3)


def test_to_uint8_and_grid(tmp_path):
    x = torch.linspace(-1.2, 1.2, 2 * 3 * 4 * 5).view(2, 3, 4, 5)
    out = to_uint8(x)
    assert out.shape == (2, 4, 5, 3) and out.min() == 0 and out.max() == 255
    grid = make_grid([[out[0], out[1]], [out[1]]], pad=2)
    assert grid.shape == (2 + 2 * (4 + 2), 2 + 2 * (5 + 2), 3)
    save_image(grid, tmp_path / "grid.png")
    assert read_image(tmp_path / "grid.png").shape == grid.shape
    grey = to_uint8(x[:, :1])
    save_image(grey[0], tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png").shape == (4, 5, 1)


def test_list_images_expands_directories(tmp_path, faces128):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="holds no image files"):
        list_images([tmp_path])
    found = list_images([faces128])
    assert len(found) == 110 and found == sorted(found)
    with pytest.raises(InputError, match="no such file or directory"):
        list_images([tmp_path / "missing"])


def test_alpha_is_composited_on_white():
    rgb = np.random.default_rng(1).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    opaque = np.concatenate([rgb, np.full((6, 6, 1), 255, np.uint8)], axis=2)
    torch.testing.assert_close(image_to_tensor(opaque, 6, 3), image_to_tensor(rgb, 6, 3), rtol=0, atol=0)
    clear = opaque.copy()
    clear[..., 3] = 0
    torch.testing.assert_close(image_to_tensor(clear, 6, 3), torch.ones(3, 6, 6))  # white, whatever lies under
    half = opaque.copy()
    half[..., 3] = 102  # 40%
    expected = (rgb.astype(np.float32) * 0.4 + 255 * 0.6) / 127.5 - 1
    torch.testing.assert_close(image_to_tensor(half, 6, 3), torch.from_numpy(expected).permute(2, 0, 1))
    grey_alpha = np.stack([rgb[..., 0], np.zeros((6, 6), np.uint8)], axis=2)  # LA, fully transparent
    torch.testing.assert_close(image_to_tensor(grey_alpha, 6, 3), torch.ones(3, 6, 6))
