"""Training data: an image folder loaded once at the model's resolution, a held-out split, and the batch sampler."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from alae_rt.errors import InputError
from alae_rt.images import image_to_tensor, read_image


@dataclass
class ImageSet:
    """Images as uint8 [N, C, R, R] (centre-cropped and average-pooled to R, as the Runtime prepares inputs)."""

    images: Tensor
    names: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]


def load_image_folder(folder: str | Path, resolution: int, channels: int,
                      report: Callable[[str], None] | None = None) -> ImageSet:
    """Every readable image under `folder` (recursively, sorted by path); unreadable files are reported and
    skipped; a folder with no readable image is an error."""
    folder = Path(folder)
    report = report or (lambda m: print(m, file=sys.stderr))
    if not folder.exists():
        raise InputError(f"--data {folder}: no such directory")
    if not folder.is_dir():
        raise InputError(f"--data {folder}: not a directory (give a folder of images)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(f"--data {folder}: the folder is empty")
    images, names, skipped = [], [], []
    for path in files:
        try:
            x = image_to_tensor(read_image(path), resolution, channels, name=str(path))  # [C, R, R] in [-1, 1]
        except InputError as exc:
            skipped.append(str(exc))
            continue
        # uint8 like the official per-LOD datasets: the pooled values rounded to the nearest level.
        images.append(((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8))
        names.append(str(path.relative_to(folder)))
    for message in skipped[:10]:
        report(f"skipped unreadable file: {message}")
    if len(skipped) > 10:
        report(f"skipped {len(skipped) - 10} more unreadable files")
    if not images:
        raise InputError(f"--data {folder}: none of its {len(files)} file(s) is a readable image")
    return ImageSet(torch.stack(images), names)


def split_holdout(data: ImageSet, count: int) -> tuple[ImageSet, ImageSet]:
    """(train, held out): the last `count` images in path order are held out, so the split is easy to name."""
    if count < 0 or count >= len(data):
        raise InputError(f"--holdout {count}: must be in [0, {len(data) - 1}] for {len(data)} image(s)")
    n = len(data) - count
    return ImageSet(data.images[:n], data.names[:n]), ImageSet(data.images[n:], data.names[n:])


def to_float(images: Tensor, resolution: int) -> Tensor:
    """uint8 [N, C, R, R] -> float [N, C, r, r] in [-1, 1], r = resolution, by repeated 2x2 average pooling."""
    x = images.float() / 127.5 - 1.0
    while x.shape[-1] > resolution:
        x = F.avg_pool2d(x, 2, 2)
    return x


def blend_reals(x: Tensor, blend: float) -> Tensor:
    """Reals while a LOD fades in: lerp(nearest-upsampled half resolution, x, blend), as the official trainer."""
    if blend >= 1.0:
        return x
    low = F.interpolate(F.avg_pool2d(x, 2, 2), scale_factor=2.0, mode="nearest")
    return torch.lerp(low, x, blend)


class BatchSampler:
    """Global batches of indices and flips from one seeded stream, each rank taking its own slice.

    Every rank draws the same global batch (same seed), so the data is sharded without communication and a
    run sees the same images whatever the number of ranks. Epochs are fresh permutations of the set.
    """

    def __init__(self, size: int, seed: int, flip: bool):
        self.size, self.flip = size, flip
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(size, generator=self.gen)
        self.pos = 0

    def next(self, batch: int, rank: int = 0, world: int = 1) -> tuple[Tensor, Tensor]:
        """(indices [batch / world], flip mask [batch / world]) for this rank."""
        idx = []
        need = batch
        while need > 0:
            if self.pos == self.size:
                self.perm = torch.randperm(self.size, generator=self.gen)
                self.pos = 0
            take = min(need, self.size - self.pos)
            idx.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            need -= take
        indices = torch.cat(idx)
        flips = (torch.rand(batch, generator=self.gen) < 0.5) if self.flip else torch.zeros(batch, dtype=torch.bool)
        per = batch // world
        return indices[rank * per:(rank + 1) * per], flips[rank * per:(rank + 1) * per]

    def state(self) -> dict[str, Tensor]:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": torch.tensor([self.pos])}

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.gen.set_state(state["gen"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"][0])


def make_batch(data: ImageSet, indices: Tensor, flips: Tensor, resolution: int, blend: float) -> Tensor:
    """Real images for one step: float [n, C, r, r], flipped where asked, blended while a LOD fades in."""
    x = to_float(data.images[indices], resolution)
    x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    return blend_reals(x, blend)
