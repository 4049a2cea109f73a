"""Reconstruction quality on held-out faces: PSNR and SSIM of a model beside the linear baselines a latent code
of the same size has to beat - the mean face and PCA of the training faces.

The split is the trainer's: a folder in path order, the last `holdout` images held out. Images are prepared as
the Runtime prepares any input (centre crop, area resize) and rounded to uint8, as the trainer stores them, so
the model and the baselines see the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from alae_rt.errors import InputError
from alae_rt.images import list_images, to_uint8

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. 2004: an 11x11 Gaussian window, sigma 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def default_holdout(n: int) -> int:
    """The trainer's default held-out count: 10 % of the images, at most 16; none for folders under 10."""
    return 0 if n < 10 else min(16, n // 10)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 image batches (mean over images of the per-image PSNR)."""
    values = []
    for x, y in zip(a, b):
        mse = np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2)
        values.append(100.0 if mse == 0 else 10.0 * math.log10(255.0**2 / mse))
    return float(np.mean(values))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two uint8 batches [N, H, W, C] (Gaussian window, per channel, mean over pixels, channels and
    images; valid region only, as Wang et al.'s reference code). Images smaller than the window use one window
    of their own size."""
    x = torch.from_numpy(a).permute(0, 3, 1, 2).double()
    y = torch.from_numpy(b).permute(0, 3, 1, 2).double()
    c = x.shape[1]
    size = min(SSIM_WINDOW, x.shape[-1], x.shape[-2])
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(c, 1, size, size)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, window, groups=c)

    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


@dataclass
class Split:
    """uint8 [N, H, W, C] training and held-out images, with the held-out file names."""

    train: np.ndarray
    held: np.ndarray
    held_names: list[str]


def split_files(folder: str | Path, holdout: int | None = None) -> tuple[list[Path], int]:
    """The folder's images and the number held out, checked (the CLI calls it before the model loads)."""
    files = list_images([folder])
    if len(files) < 2:
        raise InputError(f"{folder}: {len(files)} image(s); evaluation holds some out and fits on the rest, so it "
                         "needs at least 2")
    holdout = default_holdout(len(files)) if holdout is None else holdout
    if not 1 <= holdout < len(files):
        raise InputError(f"--holdout {holdout}: must be in [1, {len(files) - 1}] for {len(files)} image(s)")
    return files, holdout


def load_split(folder: str | Path, resolution: int, channels: int, holdout: int | None = None) -> Split:
    """The trainer's split of an image folder at the model's resolution."""
    from alae_rt.images import image_to_tensor, read_image

    files, holdout = split_files(folder, holdout)
    x = torch.stack([image_to_tensor(read_image(p), resolution, channels, name=str(p)) for p in files])
    images = to_uint8(x)
    n = len(files) - holdout
    return Split(images[:n], images[n:], [p.name for p in files[n:]])


def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64)


def pca_reconstruct(train: np.ndarray, held: np.ndarray, components: int, mirror: bool = False) -> np.ndarray:
    """Held-out images projected on the first `components` principal components of the training images (and
    their mirror images with `mirror`), mean added back; uint8 like the inputs. 0 components: the mean face."""
    data = np.concatenate([train, train[:, :, ::-1]]) if mirror else train
    x = _flat(data)
    mean = x.mean(0)
    h = np.zeros_like(mean)[None]
    if components > 0:
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        v = vt[:components]
        h = ((_flat(held) - mean) @ v.T) @ v
    rec = np.clip(np.rint(h + mean), 0, 255).astype(np.uint8)
    return np.broadcast_to(rec, (len(held), rec.shape[1])).reshape(held.shape).copy()


@dataclass
class Score:
    """One row of the table."""

    name: str
    numbers: int  # size of the code per image (0: none)
    psnr_db: float
    ssim: float


def baselines(split: Split, sizes: Sequence[int], mirror_size: int | None = None) -> list[Score]:
    """The mean face, PCA with each of `sizes` components, and PCA on the training faces plus their mirror images
    with `mirror_size` components."""
    rows = [Score("mean training face (no code)", 0, *_scores(split.held, pca_reconstruct(split.train, split.held, 0)))]
    limit = len(split.train) - 1  # rank of the centred training set
    for k in sizes:
        rec = pca_reconstruct(split.train, split.held, min(k, limit))
        rows.append(Score(f"PCA, {k} components", k, *_scores(split.held, rec)))
    if mirror_size:
        rec = pca_reconstruct(split.train, split.held, min(mirror_size, 2 * len(split.train) - 1), mirror=True)
        rows.append(Score(f"PCA, {mirror_size} components, training faces + mirror images", mirror_size,
                          *_scores(split.held, rec)))
    return rows


def _scores(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return psnr_db(a, b), ssim(a, b)


def model_reconstructions(rt, images: np.ndarray) -> np.ndarray:
    """E -> G of uint8 images through the Runtime (w broadcast, constant noise): what a user gets."""
    return rt.to_uint8(rt.reconstruct(images, noise="const"))


def evaluate(rt, folder: str | Path, holdout: int | None = None, pca: Sequence[int] | None = None,
             name: str = "model") -> dict:
    """Model and baselines on the held-out faces of `folder`; `pca` defaults to 8 and the latent size."""
    cfg = rt.config
    split = load_split(folder, cfg.resolution, cfg.channels, holdout)
    d = cfg.latent_size
    sizes = sorted(set(pca if pca is not None else (8, d)))
    rec = model_reconstructions(rt, split.held)
    train_rec = model_reconstructions(rt, split.train)
    model = Score(f"{name} (w: {d} numbers)", d, *_scores(split.held, rec))
    return {
        "folder": Path(folder).name,
        "resolution": cfg.resolution,
        "train_images": len(split.train),
        "heldout_images": len(split.held),
        "heldout_files": split.held_names,
        "model": asdict(model),
        "model_on_training_faces": asdict(Score(f"{name} on its training faces (not held out)", d,
                                                *_scores(split.train, train_rec))),
        "baselines": [asdict(s) for s in baselines(split, sizes, mirror_size=d)],
        "_split": split,
        "_reconstructions": rec,
    }


def table(result: dict) -> str:
    """The markdown table of one evaluation, best first."""
    rows = [result["model"], result["model_on_training_faces"], *result["baselines"]]
    lines = ["| reconstruction | code size | PSNR (dB) | SSIM |", "|---|---|---|---|"]
    for r in rows:
        psnr = f"{r['psnr_db']:.2f}"
        lines.append(f"| {r['name']} | {r['numbers'] or '-'} | {psnr} | {r['ssim']:.3f} |")
    return "\n".join(lines)
