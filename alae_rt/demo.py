"""The demo: reconstruct and edit sample faces with a model and write one labelled image grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from alae_rt.cli.grids import Grid, psnr, save_grid
from alae_rt.errors import InputError
from alae_rt.images import list_images
from alae_rt.runtime import Runtime

# Official FFHQ principal directions shown when the model can use them (D = 512).
DEMO_DIRECTIONS = ("smile", "young")
LOW_PSNR_DB = 15.0


__all__ = ["psnr", "run_demo"]


def run_demo(rt: Runtime, faces: str | Path, out: Path, count: int = 8, strength: float | None = None,
             directions_dir: str | Path | None = None, progress: Callable | None = None,
             say: Callable[[str], None] = print) -> Path:
    """Encode the faces, reconstruct `count` of them and edit them along two directions; write grid.png.

    Directions: the official FFHQ ones (smile, young) when `directions_dir` holds them and the model's latent
    size is theirs; otherwise the first two principal components of the faces' own w (a data-driven edit
    that works with any weights).
    """
    if count < 1:
        raise InputError(f"--count must be >= 1, got {count}")
    paths = list_images([faces])
    use_official, why_not = False, "no --directions-dir given"
    if directions_dir is not None and not Path(directions_dir).is_dir():
        raise InputError(f"{directions_dir}: no such directions folder (--directions-dir)")
    if directions_dir is not None:
        try:
            names = rt.load_directions(directions_dir)
        except InputError as exc:  # e.g. 512-d official directions for a model of another latent size
            why_not = f"the directions do not fit this model: {exc}"
        else:
            use_official = all(n in names for n in DEMO_DIRECTIONS)
            why_not = f"{directions_dir} lacks {' and '.join(DEMO_DIRECTIONS)}"
    say(f"weights: {rt.source}")
    # PCA needs a sample of encodings; the official directions only the faces shown.
    x = rt.prepare_images(paths[:count] if use_official else paths)
    originals = rt.to_uint8(x)
    bar = progress(len(x), "encode") if progress else None
    try:
        w = rt.encode(x, progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    shown = min(count, len(w))
    if use_official:
        directions = [(name, 3.0 if strength is None else strength) for name in DEMO_DIRECTIONS]
        edits_note = f"edits: official FFHQ principal directions {', '.join(DEMO_DIRECTIONS)} from {directions_dir}"
    else:
        if len(w) < 3:
            raise InputError(f"{faces}: the PCA edit needs at least 3 faces, found {len(w)}")
        centred = (w - w.mean(0)).float()
        _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
        sigma = sv[:2] / max(len(w) - 1, 1) ** 0.5
        rt.load_directions({f"pca{k}": vh[k] for k in range(2)})
        directions = [(f"pca{k}", float(2 * sigma[k]) if strength is None else strength) for k in range(2)]
        at = "+-2 std" if strength is None else f"+-{strength:g} along the unit direction"
        edits_note = f"edits: first two principal components of the {len(w)} faces' w, at {at} ({why_not})"
    say(edits_note)
    w = w[:shown]
    columns = ["original", "reconstruction"]
    decoded = [rt.to_uint8(rt.decode(w, noise="const"))]
    for name, s in directions:
        for sign in (-1, 1):
            decoded.append(rt.to_uint8(rt.decode(rt.edit(w, {name: sign * s}), noise="const")))
            columns.append(f"{name} {sign * s:+.2f}")
    rows = [[originals[i]] + [col[i] for col in decoded] for i in range(shown)]
    grid = out / "grid.png"
    quality = np.mean([psnr(originals[i], decoded[0][i]) for i in range(shown)])
    caption = [f"weights: {rt.source}", f"reconstruction PSNR over the {shown} faces shown: {quality:.2f} dB",
               edits_note]
    save_grid(Grid(rows, header=columns, caption=caption), grid)
    say(f"reconstruction PSNR over the {shown} faces shown: {quality:.2f} dB")
    if quality < LOW_PSNR_DB:
        say("note: a PSNR this low means these weights barely reconstruct these faces (random, little trained, "
            "or made for other data); the grid shows the pipeline at work, not what a trained model can do")
    say(f"wrote {grid}: {shown} rows (faces) x columns: {' | '.join(columns)}")
    return grid
