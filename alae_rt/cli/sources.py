"""The one reading of a command's latent sources (one .npy of latents, `seeds:SPEC`, or images), local and client."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alae_rt.cli.options import parse_int_list
from alae_rt.errors import InputError
from alae_rt.latents import check_latents

SEEDS_PREFIX = "seeds:"


@dataclass(frozen=True)
class Sources:
    """What a command's inputs name - exactly one of latents, seeds and paths - and an output name for each."""

    names: list[str]
    latents: np.ndarray | None = None  # [N, D] or [N, 2L, D] float32, checked
    seeds: list[int] | None = None
    paths: list[Path] | None = None


def read_sources(items: Sequence[str], latent_size: int, num_styles: int) -> Sources:
    """One .npy file (latents), one `seeds:SPEC` (e.g. seeds:0-3), or image files and folders.

    Output names: `STEM_i` for latents, `seedNNNN` for seeds, `NNNN_STEM` for images (in input order).
    """
    if len(items) == 1 and items[0].endswith(".npy"):
        w = load_latents(items[0], latent_size, num_styles)
        return Sources([f"{Path(items[0]).stem}_{i}" for i in range(len(w))], latents=w)
    if len(items) == 1 and items[0].startswith(SEEDS_PREFIX):
        seeds = parse_int_list(items[0][len(SEEDS_PREFIX):])
        return Sources([f"seed{s:04d}" for s in seeds], seeds=seeds)
    from alae_rt.images import list_images

    paths = list_images(items)
    return Sources([f"{i:04d}_{p.stem}" for i, p in enumerate(paths)], paths=paths)


def load_latents(path: str | Path, latent_size: int, num_styles: int) -> np.ndarray:
    """A .npy of w [N, D], one w [D] or styles [N, 2L, D] -> float32 array, checked by the Runtime's rule."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such latent file") from None
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if isinstance(arr, np.ndarray) and arr.ndim == 1:
        arr = arr[None]  # one w saved as [D]
    check_latents(arr, latent_size, num_styles, str(path))
    return arr.astype(np.float32)
