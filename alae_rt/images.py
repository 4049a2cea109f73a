"""Image I/O and the official preprocessing: any image file or array -> model input, model output -> uint8 HWC."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from alae_rt import codecs
from alae_rt.codecs import DEFAULT_MAX_PIXELS
from alae_rt.errors import InputError

if TYPE_CHECKING:
    from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Transparent pixels are composited on white, the page a transparent image is shown on in a browser or a document:
# what the model sees is what a person sees there (the colour stored under alpha 0 is often black or arbitrary).
ALPHA_BACKGROUND = 255.0


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as uint8 [H, W, C] with C = 1 (grey), 3 (RGB) or 4 (RGBA)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image")
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    try:
        return codecs.read_file(path, max_pixels)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def decode_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> np.ndarray:
    """Like read_image, for encoded bytes (PNG, JPEG, ...)."""
    return codecs.decode_image(data, max_pixels, name)


def image_to_tensor(image: np.ndarray | Tensor, resolution: int, channels: int, name: str = "image",
                    device=None) -> Tensor:
    """uint8 [H, W, C] -> float [channels, R, R] in [-1, 1], the way the official code prepares inputs, computed on
    `device` (default: the CPU): the uint8 pixels move there first, a quarter of the float's bytes.

    Alpha is composited on white (ALPHA_BACKGROUND; opaque pixels keep their exact values), grey is repeated to RGB
    (or RGB averaged to grey), a non-square image is centre-cropped, then repeated 2x2 average pooling while larger
    than R and adaptive average pooling to R x R.
    """
    import torch
    import torch.nn.functional as F
    from torch import Tensor

    arr = torch.tensor(np.asarray(image)) if not isinstance(image, Tensor) else image  # a copy: arrays may be read-only
    arr = arr.to("cpu" if device is None else device)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != torch.uint8 or arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{name}: expected uint8 [H, W, C] with C in 1..4, got {arr.dtype} {list(arr.shape)}")
    if min(arr.shape[:2]) < 1:
        raise InputError(f"{name}: empty image {list(arr.shape)}")
    c = arr.shape[2]
    x = arr.permute(2, 0, 1).float()  # [c, H, W]
    if c in (2, 4):
        alpha = x[-1:] / 255.0  # [1, H, W]
        x = x[:-1] * alpha + ALPHA_BACKGROUND * (1.0 - alpha)
    if channels == 1 and x.shape[0] == 3:
        x = x.mean(dim=0, keepdim=True)
    elif channels == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif channels != x.shape[0]:
        raise InputError(f"{name}: has {x.shape[0]} colour channel(s), the model takes {channels}")
    h, w = x.shape[1:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top:top + side, left:left + side].div(127.5).sub_(1.0)  # x / 127.5 - 1.0 with one new tensor
    x = x[None]  # [1, C, side, side]
    while x.shape[2] > resolution:
        x = F.avg_pool2d(x, 2, 2)
    if x.shape[2] != resolution:
        x = F.adaptive_avg_pool2d(x, (resolution, resolution))
    return x[0]


def images_to_tensor(images: Sequence[np.ndarray | Tensor] | np.ndarray | Tensor, resolution: int, channels: int,
                     names: Sequence[str] | None = None, device=None) -> Tensor:
    """A batch of uint8 HWC images (a list, or an array [N, H, W, C]) -> float [N, C, R, R] on `device`."""
    import torch

    if len(images) == 0:
        raise InputError("no images given (empty batch)")
    return torch.stack([
        image_to_tensor(img, resolution, channels, names[i] if names else f"image {i}", device)
        for i, img in enumerate(images)
    ])


def to_uint8_tensor(x: Tensor) -> Tensor:
    """float [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (rounded, clipped), on x's device: a quarter of the
    bytes of float32 to move to the host."""
    import torch

    if x.ndim != 4:
        raise InputError(f"images must be [N, C, H, W], got {list(x.shape)}")
    y = (x.detach().float() * 127.5 + 128.0).floor().clamp_(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1)


def to_uint8(x: Tensor) -> np.ndarray:
    """float [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] numpy array on the host."""
    return to_uint8_tensor(x).cpu().numpy()


def save_image(image: np.ndarray, path: str | Path) -> Path:
    """Write uint8 [H, W, C] (C = 1, 3 or 4) as PNG or JPEG (alae_rt.codecs), or another format by the file's suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        path.write_bytes(codecs.encode_png(image))
    elif suffix in (".jpg", ".jpeg"):
        path.write_bytes(codecs.encode_jpeg(image))
    else:
        from PIL import Image

        arr = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
        Image.fromarray(np.ascontiguousarray(arr)).save(path)
    return path


def make_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile rows of equally sized uint8 HWC images into one image, `pad` pixels apart."""
    if not rows or not rows[0]:
        raise InputError("make_grid needs at least one image")
    h, w, c = rows[0][0].shape
    n_cols = max(len(r) for r in rows)
    grid = np.full((pad + len(rows) * (h + pad), pad + n_cols * (w + pad), c), fill, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            if img.shape != (h, w, c):
                raise InputError(f"make_grid: image shape {img.shape} differs from {(h, w, c)}")
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = img
    return grid


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories expanded to their image files (sorted); errors name what is missing."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"{p}: directory holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            found.extend(files)
        elif p.is_file():
            found.append(p)
        else:
            raise InputError(f"{p}: no such file or directory")
    if not found:
        raise InputError("no input images given")
    return found
