"""The demo: reconstruct and edit sample faces with a model and write one labelled image grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from alae_rt.cli.grids import Grid, file_names_only, psnr, save_grid
from alae_rt.errors import InputError
from alae_rt.images import list_images
from alae_rt.runtime import Runtime

# Official FFHQ principal directions shown when the model can use them (D = 512).
DEMO_DIRECTIONS = ("smile", "young")
# Otherwise the model's own first two principal directions (the bundled model's directions/, as `alae-rt directions
# pca` names them), or, for a model without them, the same two computed from the faces' w.
OWN_DIRECTIONS = ("pc00", "pc01")
LOW_PSNR_DB = 15.0


__all__ = ["psnr", "run_demo"]


def run_demo(rt: Runtime, faces: str | Path, out: Path, count: int = 8, strength: float | None = None,
             directions_dir: str | Path | None = None, progress: Callable | None = None,
             say: Callable[[str], None] = print) -> Path:
    """Encode the faces, reconstruct `count` of them and edit them along two directions; write grid.png.

    Directions: the official FFHQ ones (smile, young) when `directions_dir` holds them and the model's latent
    size is theirs; else the model's own first two principal directions (OWN_DIRECTIONS, which the bundled model
    comes with); else the first two principal components of the faces' own w (a data-driven edit that works with
    any weights), named as `alae-rt directions pca` names them.
    """
    if count < 1:
        raise InputError(f"--count must be >= 1, got {count}")
    paths = list_images([faces])
    use_official, why_not = False, ""
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
    # PCA and the strengths along the model's own directions need a sample of encodings; the official
    # directions only the faces shown.
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
            raise InputError(f"{faces}: the edit needs at least 3 faces to measure their spread, found {len(w)}")
        centred = (w - w.mean(0)).float()  # [N, D]
        own = [rt.directions.get(name) for name in OWN_DIRECTIONS]
        if all(d is not None and d.ndim == 1 for d in own):
            units = [(d / d.norm()).to(centred) for d in own]
            what = f"the model's own principal directions {', '.join(OWN_DIRECTIONS)}"
        else:
            units = list(torch.linalg.svd(centred, full_matrices=False)[2][:2])
            rt.load_directions(dict(zip(OWN_DIRECTIONS, units)))
            what = f"the first two principal components of the {len(w)} faces' w ({', '.join(OWN_DIRECTIONS)})"
        sigma = [float((centred @ u).std()) for u in units]  # the faces' spread along each
        directions = [(name, 2 * sd if strength is None else strength) for name, sd in zip(OWN_DIRECTIONS, sigma)]
        at = f"+-2 std of the {len(w)} faces' w" if strength is None else f"+-{strength:g} along the unit direction"
        edits_note = f"edits: {what}, at {at}" + (f" ({why_not})" if why_not else "")
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
    caption = [f"weights: {file_names_only(rt.source)}",
               f"reconstruction PSNR over the {shown} faces shown: {quality:.2f} dB", file_names_only(edits_note)]
    save_grid(Grid(rows, header=columns, caption=caption), grid)
    say(f"reconstruction PSNR over the {shown} faces shown: {quality:.2f} dB")
    if quality < LOW_PSNR_DB:
        say("note: a PSNR this low means these weights barely reconstruct these faces (random, little trained, "
            "or made for other data); the grid shows the pipeline at work, not what a trained model can do")
    say(f"wrote {grid}: {shown} rows (faces) x columns: {' | '.join(columns)}")
    return grid
