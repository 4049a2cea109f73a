"""Every grid.png: one labelled layout per command, drawn by the same functions for the local commands, the client
and the demo (numpy and Pillow only: the client draws its grids without torch).

A grid is a table of images with a label over each column (or over each cell), an optional text in an empty cell
and a caption under it naming the columns, the weights and, where the originals are known, the reconstruction
PSNR. Thumbnails smaller than MIN_CELL pixels are enlarged by a whole factor (nearest neighbour) so that the labels
fit; the pixels of each image are otherwise as written to its PNG.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alae_rt.cli.options import say

Image = np.ndarray  # uint8 [R, R, C]

GENERATE_PER_ROW = 8  # images a row
RECONSTRUCT_PER_ROW = 4  # (original, reconstruction) pairs a row
EDIT_PER_ROW = 2  # (original, reconstruction, edited) or (decoded, edited) groups a row
MIN_CELL = 128  # thumbnails are shown at least this large (a whole-number enlargement)
PAD = 2
MARGIN = 6
LABEL_LINES = 2  # a label wraps to at most this many lines, then ends in "..."
INK, PAPER = 0, 255
# A grid shows at most GRID_MAX_IMAGES results (the first ones; every one is in the output folder) in at most
# GRID_MAX_PIXELS pixels of cells: a run of any length and resolution draws a grid of bounded size and memory.
GRID_MAX_IMAGES = 64
GRID_MAX_PIXELS = 2**24  # 16 cells of 1024 x 1024, 64 of 512 x 512 or smaller


def grid_capacity(resolution: int) -> int:
    """The results a grid of R x R images shows."""
    cell = max(resolution, MIN_CELL)
    return max(1, min(GRID_MAX_IMAGES, GRID_MAX_PIXELS // (cell * cell)))


def shown_note(shown: int, total: int, what: str = "results") -> list[str]:
    """The caption line of a grid that shows the first `shown` of `total` results (none when it shows them all)."""
    return [f"the first {shown} of {total} {what} are shown; all {total} are in the folder"] if total > shown else []


def mix_shown(n_a: int, n_b: int, capacity: int) -> tuple[int, int]:
    """The rows (a) and columns (b) of a mix grid: all of them within `capacity` mixes, else the first ones - up to
    capacity rows of one b, or capacity columns of one a, at least 8 of each where there are that many."""
    if n_a * n_b <= capacity:
        return n_a, n_b
    rows = min(n_a, max(GENERATE_PER_ROW, capacity // n_b))
    return rows, min(n_b, max(1, capacity // rows))


def frames_shown(steps: int, pairs: int, capacity: int) -> tuple[list[int], int]:
    """An interpolation grid's frames (indices, both ends among them, evenly spaced when there are more than
    `capacity`) and its rows (the first pairs)."""
    if steps <= capacity:
        frames = list(range(steps))
    else:
        frames = sorted({round(i * (steps - 1) / (capacity - 1)) for i in range(capacity)}) if capacity > 1 else [0]
    return frames, min(pairs, max(1, capacity // len(frames)))


def file_names_only(text: str) -> str:
    """A description of the weights with each file path cut to its name: a grid (and a server's caller) says which
    file, not where it lies ("alae-rt checkpoint /srv/models/ffhq.safetensors (...)" -> "... ffhq.safetensors
    (...)"). Every grid's caption names the weights so, the local commands', the client's and the demo's alike."""
    return re.sub(r"(?:[A-Za-z]:)?[^\s()'\"]*[/\\](?=[^\s/\\])", "", text)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (or batches)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


@dataclass
class Grid:
    """rows of images (None: an empty cell, which may hold a `note`), labelled by `header` (one label over each
    column, once) and/or `labels` (one over each cell), with caption lines under the table."""

    rows: list[list[Image | None]]
    header: list[str] = field(default_factory=list)
    labels: list[list[str]] | None = None
    notes: dict[tuple[int, int], str] = field(default_factory=dict)
    caption: list[str] = field(default_factory=list)


@dataclass
class Layout:
    """Where things landed in a rendered grid: the top-left pixel of each cell, and the enlargement factor."""

    cells: dict[tuple[int, int], tuple[int, int]]
    scale: int
    size: int  # a cell's side in pixels

    def crop(self, image: np.ndarray, i: int, j: int) -> np.ndarray:
        """Cell (i, j) of a rendered grid at the images' own size (undoing the enlargement)."""
        y, x = self.cells[(i, j)]
        return image[y:y + self.size:self.scale, x:x + self.size:self.scale]


# ---- the commands' layouts ---------------------------------------------------------------------------------


def in_rows(groups: Sequence[Sequence[Image]], per_row: int) -> list[list[Image]]:
    """Groups of images (e.g. original + reconstruction) side by side, `per_row` groups a row."""
    return [[img for group in groups[start:start + per_row] for img in group]
            for start in range(0, len(groups), per_row)]


def generate_grid(images: Sequence[Image], names: Sequence[str], caption: Sequence[str],
                  total: int | None = None) -> Grid:
    """The generated images, GENERATE_PER_ROW a row, each labelled with its seed; `total`: of a run that made more
    than the grid shows."""
    rows = in_rows([[img] for img in images], GENERATE_PER_ROW)
    labels = in_rows([[n] for n in names], GENERATE_PER_ROW)
    return Grid(rows, labels=labels, caption=[*caption, *shown_note(len(images), total or len(images), "images")])


def reconstruct_grid(originals: Sequence[Image], reconstructions: Sequence[Image], weights: str,
                     total: int | None = None) -> Grid:
    """original | reconstruction, RECONSTRUCT_PER_ROW pairs a row; the caption gives the PSNR."""
    rows = in_rows(list(zip(originals, reconstructions)), RECONSTRUCT_PER_ROW)
    n = len(originals)
    return Grid(rows, header=["original", "reconstruction"] * min(n, RECONSTRUCT_PER_ROW),
                caption=[f"{total or n} image(s): original (as the model sees it) | reconstruction",
                         *shown_note(n, total or n, "reconstructions"),
                         psnr_line(originals, reconstructions), f"weights: {weights}"])


def edit_grid(originals: Sequence[Image] | None, decoded: Sequence[Image], edited: Sequence[Image],
              edit_label: str, weights: str, edit_note: str = "", total: int | None = None) -> tuple[Grid, str]:
    """original | reconstruction | edited for images, decoded | edited for latents and seeds, EDIT_PER_ROW
    groups a row -> (the grid, the columns as the command's message names them)."""
    n = len(decoded)
    groups = min(n, EDIT_PER_ROW)
    if originals is not None:
        columns = ["original", "reconstruction", edit_label]
        rows = in_rows(list(zip(originals, decoded, edited)), EDIT_PER_ROW)
        quality = [psnr_line(originals, decoded)]
    else:
        columns = ["decoded", edit_label]
        rows = in_rows(list(zip(decoded, edited)), EDIT_PER_ROW)
        quality = []
    names = " | ".join(columns[:-1] + ["edited"])
    caption = [f"{total or n} input(s): {names}; edited: {edit_note or edit_label}",
               *shown_note(n, total or n, "inputs"), *quality, f"weights: {weights}"]
    return Grid(rows, header=columns * groups, caption=caption), names


def mix_grid(images_a: Sequence[Image], images_b: Sequence[Image], mixed: Sequence[Sequence[Image]],
             names_a: Sequence[str], names_b: Sequence[str], cutoff: int, weights: str,
             total: tuple[int, int] | None = None) -> Grid:
    """The b inputs along the top, the a inputs down the left, mix (a_i, b_j) at row i, column j; inputs that are
    images are shown as the photos (as the model sees them), latents and seeds decoded. `total`: the (a, b) counts
    of a run that made more mixes than the grid shows (mix_shown)."""
    n_a, n_b = total or (len(images_a), len(images_b))
    rows: list[list[Image | None]] = [[None, *images_b]]
    rows.extend([a, *row] for a, row in zip(images_a, mixed))
    header = ["a \\ b", *(f"b: {n}" for n in names_b)]
    labels = [["", *([""] * len(images_b))]] + [[f"a: {n}", *([""] * len(images_b))] for n in names_a]
    note = f"styles < {cutoff} from a (rows), the rest from b (columns)"
    return Grid(rows, header=header, labels=labels, notes={(0, 0): note},
                caption=[f"mix: style inputs < {cutoff} (coarse) from a, >= {cutoff} from b; "
                         f"{n_a} x {n_b} mixes",
                         *shown_note(len(images_a) * len(images_b), n_a * n_b,
                                     f"mixes ({len(images_a)} x {len(images_b)})"),
                         f"weights: {weights}"])


def interpolate_grid(frames: Sequence[Sequence[Image]], names: Sequence[str], ts: Sequence[float],
                     weights: str, total: tuple[int, int] | None = None) -> Grid:
    """One row per (a, b) pair (labelled 'a -> b'), its frames from a (t = 0) to b (t = 1) left to right. `total`:
    the (pairs, frames) of a run that made more than the grid shows (frames_shown)."""
    pairs, steps = total or (len(names), len(ts))
    header = [f"t = {t:.2f}" + (" (a)" if t == 0 else " (b)" if t == 1 else "") for t in ts]
    labels = [[name] + [""] * (len(ts) - 1) for name in names]
    shown = []
    if steps > len(ts):
        shown.append(f"{len(ts)} of the {steps} frames are shown, evenly spaced; all are in the folder")
    shown += shown_note(len(names), pairs, "interpolations")
    return Grid([list(row) for row in frames], header=header, labels=labels,
                caption=[f"interpolation in W, {steps} frames from a to b (both included), {pairs} pair(s)",
                         *shown, f"weights: {weights}"])


def psnr_line(originals: Sequence[Image], reconstructions: Sequence[Image]) -> str:
    n = len(originals)
    value = np.mean([psnr(a, b) for a, b in zip(originals, reconstructions)])
    return f"reconstruction PSNR: {value:.2f} dB (mean over {n} image(s))"


def edit_label(edits: Sequence[tuple[str, float]], mode: str = "add") -> str:
    """[(name, strength)] -> 'smile +3, young -1' (mode add) or 'smile = 3' (mode set); a .npy path by its stem."""
    parts = []
    for name, strength in edits:
        short = Path(name).stem if str(name).endswith(".npy") else str(name)
        parts.append(f"{short} = {strength:g}" if mode == "set" else f"{short} {strength:+g}")
    return ", ".join(parts)


def model_view(image: np.ndarray, resolution: int, channels: int, name: str = "image") -> Image:
    """uint8 [H, W, C] -> uint8 [R, R, channels] as the model sees it (alae_rt.images.image_to_tensor's steps: alpha
    on white, grey/RGB to the model's channels, centre crop, 2x2 average pooling while larger than R, then
    adaptive average pooling), in numpy: the client draws its grids without torch. Within 1 level of the Runtime's."""
    from alae_rt.errors import InputError
    from alae_rt.images import ALPHA_BACKGROUND

    x = np.asarray(image, dtype=np.float32)
    x = x[:, :, None] if x.ndim == 2 else x
    if x.shape[2] in (2, 4):
        alpha = x[:, :, -1:] / 255.0
        x = x[:, :, :-1] * alpha + ALPHA_BACKGROUND * (1.0 - alpha)
    if channels == 1 and x.shape[2] == 3:
        x = x.mean(axis=2, keepdims=True)
    elif channels == 3 and x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    elif channels != x.shape[2]:
        raise InputError(f"{name}: has {x.shape[2]} colour channel(s), the model takes {channels}")
    h, w = x.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[top:top + side, left:left + side]
    while x.shape[0] > resolution:
        s = x.shape[0] // 2
        x = x[:2 * s, :2 * s].reshape(s, 2, s, 2, -1).mean(axis=(1, 3))
    n = x.shape[0]
    if n != resolution:
        bins = [(i * n // resolution, -(-(i + 1) * n // resolution)) for i in range(resolution)]
        x = np.stack([np.stack([x[a:b, c:d].mean(axis=(0, 1)) for c, d in bins]) for a, b in bins])
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


# ---- drawing -------------------------------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's own scalable font: nothing to download
    except TypeError:  # Pillow < 10.1: the bitmap font
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int, max_lines: int | None) -> list[str]:
    """Words to lines no wider than `width` (a word longer than that is cut); at most `max_lines`, the last ending
    in '...' when text was left out."""
    fits = lambda s: draw.textlength(s, font=font) <= width  # noqa: E731
    lines: list[str] = []
    for word in text.split():
        line = f"{lines[-1]} {word}" if lines else word
        if lines and fits(line):
            lines[-1] = line
            continue
        while not fits(word) and len(word) > 1:  # cut a long word across lines
            cut = max(k for k in range(1, len(word) + 1) if fits(word[:k]) or k == 1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    if max_lines is not None and len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and not fits(last + "..."):
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last + "..."]
    return lines


def render(grid: Grid) -> tuple[np.ndarray, Layout]:
    """Draw a Grid: uint8 [H, W, C] (C of the images) and where each cell is."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    first = next((img for row in grid.rows for img in row if img is not None), None)
    if first is None:
        raise ValueError("a grid needs at least one image")
    h, w, c = first.shape
    scale = max(1, -(-MIN_CELL // max(h, w)))  # ceil
    cell = max(h, w) * scale
    n_cols = max(len(r) for r in grid.rows)
    width = PAD + n_cols * (cell + PAD)
    font = _font(int(min(max(12, cell // 11), 28)))
    probe = ImageDraw.Draw(PILImage.new("L", (1, 1)))
    line_h = int(sum(abs(v) for v in font.getmetrics())) + 2

    def lines(text: str, limit: int | None = LABEL_LINES, w_px: int = cell) -> list[str]:
        return _wrap(probe, text, font, w_px - 4, limit) if text else []

    header = [lines(t) for t in grid.header]
    header_h = max((len(x) for x in header), default=0) * line_h
    row_labels = [[lines(t) for t in row] for row in (grid.labels or [])]
    label_h = [max((len(x) for x in row), default=0) * line_h for row in row_labels] + [0] * len(grid.rows)
    caption = [ln for text in grid.caption for ln in lines(text, None, width - 2 * MARGIN)]
    caption_h = len(caption) * line_h + (MARGIN if caption else 0)
    top = PAD + (header_h + PAD if header_h else 0)
    ys = []
    y = top
    for i in range(len(grid.rows)):
        y += label_h[i]
        ys.append(y)
        y += cell + PAD
    height = y + caption_h
    canvas = PILImage.new("L" if c == 1 else "RGB", (width, height), PAPER if c == 1 else (PAPER,) * 3)
    draw = ImageDraw.Draw(canvas)
    ink = INK if c == 1 else (INK,) * 3

    def text_block(block: list[str], x: int, y: int, centre: bool = True) -> None:
        for k, ln in enumerate(block):
            dx = (cell - draw.textlength(ln, font=font)) / 2 if centre else 2
            draw.text((x + max(0, dx), y + k * line_h), ln, fill=ink, font=font)

    cells: dict[tuple[int, int], tuple[int, int]] = {}
    for j, block in enumerate(header):
        text_block(block, PAD + j * (cell + PAD), PAD)
    for i, row in enumerate(grid.rows):
        for j, img in enumerate(row):
            x = PAD + j * (cell + PAD)
            if i < len(row_labels) and j < len(row_labels[i]):
                text_block(row_labels[i][j], x, ys[i] - label_h[i])
            cells[(i, j)] = (ys[i], x)
            if img is None:
                note = grid.notes.get((i, j))
                if note:
                    text_block(lines(note, cell // line_h), x, ys[i] + 2)
                continue
            if img.shape != (h, w, c):
                raise ValueError(f"grid: image shape {img.shape} differs from {(h, w, c)}")
            big = np.repeat(np.repeat(img, scale, 0), scale, 1)
            canvas.paste(PILImage.fromarray(big[:, :, 0] if c == 1 else big[:, :, :3]), (x, ys[i]))
    text_block(caption, MARGIN - 2, height - caption_h + MARGIN // 2, centre=False)
    out = np.asarray(canvas)
    return (out[:, :, None] if c == 1 else out), Layout(cells, scale, cell)


def save_grid(grid: Grid, path: Path, args: argparse.Namespace | None = None) -> Layout:
    """Draw `grid` into `path` (a PNG) and say so."""
    from alae_rt.images import save_image

    image, layout = render(grid)
    save_image(image, path)
    if args is not None:
        say(args, f"wrote {path}")
    return layout
