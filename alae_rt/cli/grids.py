"""The grid.png of each command, one layout each, drawn by the same function for the local commands and the client."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alae_rt.cli.options import say

Image = np.ndarray  # uint8 [R, R, C]

GENERATE_PER_ROW = 8  # images a row
RECONSTRUCT_PER_ROW = 4  # (original, reconstruction) pairs a row
EDIT_PER_ROW = 2  # (original, reconstruction, edited) or (decoded, edited) groups a row


def in_rows(groups: Sequence[Sequence[Image]], per_row: int) -> list[list[Image]]:
    """Groups of images (e.g. original + reconstruction) side by side, `per_row` groups a row."""
    return [[img for group in groups[start:start + per_row] for img in group]
            for start in range(0, len(groups), per_row)]


def generate_rows(images: Sequence[Image]) -> list[list[Image]]:
    return in_rows([[img] for img in images], GENERATE_PER_ROW)


def reconstruct_rows(originals: Sequence[Image], reconstructions: Sequence[Image]) -> list[list[Image]]:
    """original | reconstruction, RECONSTRUCT_PER_ROW pairs a row."""
    return in_rows(list(zip(originals, reconstructions)), RECONSTRUCT_PER_ROW)


def edit_rows(originals: Sequence[Image] | None, decoded: Sequence[Image],
              edited: Sequence[Image]) -> tuple[list[list[Image]], str]:
    """original | reconstruction | edited for images, decoded | edited for latents and seeds, EDIT_PER_ROW
    groups a row -> (rows, the columns as the command's message names them)."""
    if originals is not None:
        return in_rows(list(zip(originals, decoded, edited)), EDIT_PER_ROW), "original | reconstruction | edited"
    return in_rows(list(zip(decoded, edited)), EDIT_PER_ROW), "decoded | edited"


def mix_rows(images_a: Sequence[Image], images_b: Sequence[Image],
             mixed: Sequence[Sequence[Image]]) -> list[list[Image]]:
    """A header row of the b images (after a blank corner), then one row per a: the a image and its mixes."""
    rows = [[np.full_like(images_b[0], 255), *images_b]]
    rows.extend([a, *row] for a, row in zip(images_a, mixed))
    return rows


def save_grid(rows: Sequence[Sequence[Image]], path: Path, args: argparse.Namespace) -> None:
    """Tile the rows into `path` (a PNG) and say so."""
    from alae_rt.images import make_grid, save_image

    save_image(make_grid(rows), path)
    say(args, f"wrote {path}")
