"""What the local and the client commands write, one way for both: sortable output names, images saved as they
come and counted ("wrote K of N"), .npy rows saved as they come, and the failure message that names what was kept.

A run that fails or is interrupted part-way keeps every file it finished: images are written whole or not at all
(each to a hidden file first, then renamed), and the count it reports is the number of files in the folder.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from alae_rt.cli.options import say
from alae_rt.errors import AlaeError

INDEX_DIGITS = 4  # output numbers are zero-padded to at least this many digits, more where there are more


# ---- names ---------------------------------------------------------------------------------------------------


def _width(n: int) -> int:
    """Digits that number 0 .. n - 1 in sorting order."""
    return max(INDEX_DIGITS, len(str(max(n - 1, 0))))


def image_names(paths: Sequence[Path]) -> list[str]:
    """Output names of input images, in input order: NNNN_STEM (the number keeps two files of one stem apart)."""
    width = _width(len(paths))
    return [f"{i:0{width}d}_{p.stem}" for i, p in enumerate(paths)]


def latent_names(path: str | Path, n: int) -> list[str]:
    """Output names of the n rows of a latents file: STEM_NNNN (w.npy: w_0000, w_0001, ...)."""
    width = _width(n)
    stem = Path(path).stem
    return [f"{stem}_{i:0{width}d}" for i in range(n)]


def seed_names(seeds: Sequence[int]) -> list[str]:
    """Output names of seeds: seedNNNN (the seed's own value, zero-padded to INDEX_DIGITS)."""
    return [f"seed{s:0{INDEX_DIGITS}d}" for s in seeds]


# ---- what was written ------------------------------------------------------------------------------------------


class Written:
    """What a command has written so far, for the message when it fails part-way.

    `state` is (files finished, the hidden file being renamed into place or None), assigned as one value: a Ctrl-C
    arrives between two Python steps, never inside an assignment, so the count read after it is exact (a rename
    that happened has consumed the hidden file)."""

    def __init__(self, total: int, what: str, out: Path):
        self.total, self.what, self.out = total, what, out
        self.state: tuple[int, Path | None] = (0, None)

    @property
    def count(self) -> int:
        done, landing = self.state
        return done + (landing is not None and not landing.exists())

    def add(self, k: int) -> None:
        self.state = (self.state[0] + k, None)


@contextmanager
def reporting(args: argparse.Namespace, written: Written, on_failure: Callable[[int], None] | None = None):
    """A failure part-way names what was written before it; `on_failure(count)` first saves what goes with those
    files (the latents of the images written). The files of the steps that completed stay."""
    try:
        yield
    except (AlaeError, OSError, KeyboardInterrupt) as exc:  # OSError: writing (a full disk, permissions, ...)
        count = written.count
        if not count:
            raise
        if on_failure is not None:
            on_failure(count)
        done = f"wrote {count} of {written.total} {written.what} to {written.out} before the failure"
        if isinstance(exc, KeyboardInterrupt):
            say(args, done.replace("the failure", "the interruption"))
            raise
        if isinstance(exc, OSError):
            exc = f"{exc.filename}: {exc.strerror or exc}" if exc.filename else (exc.strerror or exc)
        raise AlaeError(f"{exc}; {done}") from None


def save_images(images: Sequence[np.ndarray], names: Sequence[str], out: Path, written: Written | None = None) -> None:
    """uint8 [N, R, R, C] -> OUT/NAME.png, one file per name, each whole or not at all; `written` counts them."""
    from alae_rt.images import save_image

    for img, name in zip(images, names):
        path = out / f"{name}.png"
        part = out / f".{name}.part.png"
        try:
            save_image(img, part)
            if written is not None:
                written.state = (written.state[0], part)
            os.replace(part, path)
        except BaseException as exc:
            if part.exists():  # not renamed: this image is not written
                part.unlink()
                if written is not None:
                    written.state = (written.state[0], None)
            if isinstance(exc, OSError) and exc.errno is not None:  # named by the file it was for
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            raise
        if written is not None:
            written.add(1)


class NpyRows:
    """An .npy file written a block of rows at a time (memory: one block), whole once `finish`ed: the rows go to a
    hidden file as they come, and `finish(n)` writes the header and the first n rows to `path`. As a context, a
    run that leaves it unfinished leaves no file."""

    def __init__(self, path: Path):
        self.path = path
        self.part = path.with_name(f".{path.name}.part")
        self.rows = 0
        self.row_shape: tuple[int, ...] | None = None
        self._file = open(self.part, "wb")

    def __enter__(self) -> NpyRows:
        return self

    def __exit__(self, *exc) -> None:
        if not self._file.closed:
            self._file.close()
            self.part.unlink(missing_ok=True)

    def add(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=np.float32)
        self.row_shape = self.row_shape or block.shape[1:]
        self._file.write(block.tobytes())
        self.rows += len(block)

    def finish(self, rows: int | None = None) -> Path | None:
        """Write `path` with the first `rows` rows (default all; none written: no file)."""
        rows = self.rows if rows is None else min(rows, self.rows)
        self._file.close()
        try:
            if rows == 0 or self.row_shape is None:
                return None
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": (rows, *self.row_shape)}
            size = rows * int(np.prod(self.row_shape, dtype=np.int64)) * 4
            with open(self.part, "rb") as src, open(self.path, "wb") as dst:
                np.lib.format.write_array_header_1_0(dst, header)
                _copy(src, dst, size)
            return self.path
        finally:
            self.part.unlink(missing_ok=True)


def _copy(src, dst, size: int, block: int = 1 << 22) -> None:
    """The first `size` bytes of src into dst, a block at a time."""
    while size > 0:
        data = src.read(min(block, size))
        if not data:
            break
        dst.write(data)
        size -= len(data)

