"""The one reading of a command's latent sources (one .npy of latents, `seeds:SPEC`, or images), local and client.

Sources are read before the model loads (a missing file or a bad seed list is reported at once) and checked
against the model's shapes after (`Sources.checked`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from alae_rt.cli.options import parse_seeds
from alae_rt.cli.outputs import image_names, latent_names, seed_names
from alae_rt.errors import InputError
from alae_rt.latents import check_latents

SEEDS_PREFIX = "seeds:"
NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class Sources:
    """What a command's inputs name - exactly one of latents, seeds and paths - with an output name for each
    (alae_rt.cli.outputs: sortable, the same in the local and the client commands) and a label for the grids (the
    file's name, `w.npy[3]`, `seed 7`)."""

    names: list[str]
    labels: list[str]
    latents: np.ndarray | None = None  # [N, D] or [N, 2L, D] float32 once checked
    seeds: list[int] | None = None
    paths: list[Path] | None = None
    where: str = ""  # the .npy file the latents came from

    def checked(self, latent_size: int, num_styles: int) -> Sources:
        """The latents checked against the model (shape, values) and made float32; seeds and images as they are."""
        if self.latents is None:
            return self
        return replace(self, latents=check_latent_array(self.latents, latent_size, num_styles, self.where))


def read_sources(items: Sequence[str]) -> Sources:
    """One .npy file (latents), one `seeds:SPEC` (e.g. seeds:0-3), or image files and folders.

    Output names: `STEM_NNNN` for latents, `seedNNNN` for seeds, `NNNN_STEM` for images (in input order).
    """
    if len(items) == 1 and items[0].endswith(".npy"):
        w = read_latents(items[0])
        n = 1 if w.ndim == 1 else len(w)
        name = Path(items[0]).name
        return Sources(latent_names(items[0], n), [f"{name}[{i}]" for i in range(n)], latents=w, where=items[0])
    if len(items) == 1 and items[0].startswith(SEEDS_PREFIX):
        seeds = parse_seeds(items[0][len(SEEDS_PREFIX):])
        return Sources(seed_names(seeds), [f"seed {s}" for s in seeds], seeds=seeds)
    several = [item for item in items if item.endswith(".npy") or item.startswith(SEEDS_PREFIX)]
    if len(items) > 1 and several:
        raise InputError(f"{several[0]}: give one .npy file or one seeds:SPEC alone (seeds:0-3 takes a range), or "
                         f"image files; got {len(items)} sources")
    from alae_rt.images import list_images

    paths = list_images(items)
    return Sources(image_names(paths), [p.name for p in paths], paths=paths)


def read_npy(path: str | Path, what: str = "array") -> np.ndarray:
    """A .npy file of numbers -> array; errors say what is wrong in this program's words (no pickle is read)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a .npy {what} file")
    if not path.is_file():
        raise InputError(f"{path}: no such {what} file")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if magic != NPY_MAGIC:
        raise InputError(f"{path}: not a .npy file (it lacks the NPY header; write it with numpy.save)")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise InputError(f"{path}: holds Python objects, not numbers (a .npy {what} is a float array)") from None
        raise InputError(f"{path}: not a readable .npy {what} ({exc})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: truncated or unreadable .npy {what} ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{path}: not a single .npy {what}")
    return arr


def read_latents(path: str | Path) -> np.ndarray:
    """A .npy of latents as stored (checked against a model by check_latent_array)."""
    return read_npy(path, "latent")


def check_latent_array(arr: np.ndarray, latent_size: int, num_styles: int, where: str) -> np.ndarray:
    """w [N, D], one w [D] (taken as [1, D]) or styles [N, 2L, D] -> float32, checked by the Runtime's rule."""
    if arr.ndim == 1:
        arr = arr[None]  # one w saved as [D]
    check_latents(arr, latent_size, num_styles, str(where))
    return arr.astype(np.float32)


def load_latents(path: str | Path, latent_size: int, num_styles: int) -> np.ndarray:
    """A .npy of w [N, D], one w [D] or styles [N, 2L, D] -> float32 array, checked by the Runtime's rule."""
    return check_latent_array(read_latents(path), latent_size, num_styles, str(path))
