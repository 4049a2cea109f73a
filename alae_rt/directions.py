"""Edit directions in W for any model: principal components of w, and unit normals of linear classifiers on labelled w.

A directions folder holds `NAME.npy` (float32 [D], unit length) and `directions.json`, which gives each name a
label, the method that made it (with its figures: explained variance, or held-out accuracy) and a strength range:
what `Runtime.load_directions`, `alae-rt edit --directions-dir` and the server read. A strength is a distance in W
along the unit direction; the range is +-RANGE_SD standard deviations of the data's w along it.

Math on numpy arrays (w from any model: the Runtime's, or the MLP ALAE's on digits); torch only where a Runtime is
given (sampling w, the preview grid); scikit-learn only inside `fit_direction`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alae_rt.errors import InputError

INFO_FILE = "directions.json"
FORMAT = "alae-rt directions 1"
RANGE_SD = 3.0  # the strength range a direction suggests: +-3 std of the data's w along it
# The slider range offered for a direction that comes without one (the official FFHQ .npy files): a default for
# unit-scale directions, not a measurement; callers may send any strength within the server's --max-strength.
DEFAULT_RANGE = (-10.0, 10.0)
PREVIEW_SD = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)  # preview columns, in std of the data along the direction
CLASSIFIERS = ("svm", "logistic")
CHANCE_SE = 2.0  # held-out accuracy beyond chance by this many standard errors of a chance-level classifier
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True, eq=False)
class Direction:
    """A unit direction in W [D] with what it was made from; `info()` is its entry in directions.json."""

    name: str
    vector: np.ndarray  # float32 [D], unit length
    label: str
    method: str  # "pca" or "fit"
    std: float  # std of the data's w along `vector`: the unit of the preview and of the range
    stats: dict[str, Any] = field(default_factory=dict)  # pca: variance; fit: accuracy, folds, chance, ...

    @property
    def range(self) -> tuple[float, float]:
        return (-RANGE_SD * self.std, RANGE_SD * self.std)

    def info(self) -> dict[str, Any]:
        return {"label": self.label, "method": self.method, "std": _round(self.std),
                "range": [_round(v) for v in self.range], **self.stats}


# ---- the math ------------------------------------------------------------------------------------------------


def as_w(w: Any, name: str = "w") -> np.ndarray:
    """w [N, D] (numpy array or torch tensor, any device or dtype) -> float64 numpy, checked to be finite."""
    if hasattr(w, "detach"):  # a torch.Tensor, without importing torch
        w = w.detach().float().cpu().numpy()
    w = np.asarray(w)
    if w.dtype.kind not in "fiu" or w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise InputError(f"{name}: expected w [N, D] with N >= 1, got {w.dtype} {list(w.shape)}", field=name)
    if not np.isfinite(w).all():
        raise InputError(f"{name}: holds NaN or Inf", field=name)
    return w.astype(np.float64)


def principal_directions(w: Any, count: int, prefix: str = "pc", source: str = "w") -> list[Direction]:
    """The first `count` principal components of w [N, D] (GANSpace in W), largest variance first.

    Each is a unit vector with `variance` (its share of the total variance of w: descending, summing to <= 1) and
    `std` (the std of w along it). Signs are fixed so that a component's largest coordinate is positive.
    """
    w = as_w(w, source)
    n, d = w.shape
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise InputError(f"count: {count!r} is not a positive number of directions", field="count")
    if count > d:
        raise InputError(f"count: {count} directions asked for, but w has D = {d} dimensions", field="count")
    if count > n - 1:
        raise InputError(f"{source}: {n} sample(s) give at most {max(n - 1, 0)} principal component(s); asked for "
                         f"{count}", field="count")
    centred = w - w.mean(0)  # [N, D]
    _, sv, vh = np.linalg.svd(centred, full_matrices=False)  # sv [min(N, D)], vh [min(N, D), D]
    var = sv**2 / (n - 1)
    total = float(var.sum())
    if total <= 0:
        raise InputError(f"{source}: all {n} samples have the same w; there is no variance to decompose",
                         field="w")
    out = []
    for k in range(count):
        v = vh[k] * np.sign(vh[k][np.argmax(np.abs(vh[k]))])
        out.append(Direction(f"{prefix}{k:02d}", v.astype(np.float32), f"principal component {k}", "pca",
                             float(math.sqrt(var[k])), {"variance": _round(float(var[k]) / total)}))
    return out


def fit_direction(w_positive: Any, w_negative: Any, name: str = "direction", label: str | None = None,
                  classifier: str = "svm", folds: int = 5, seed: int = 0,
                  orthogonal_to: Mapping[str, Any] | None = None,
                  classes: tuple[str, str] = ("positive", "negative")) -> Direction:
    """The unit normal of a linear classifier separating w_positive [P, D] from w_negative [Q, D], pointing towards
    the positive class (InterFaceGAN), with its k-fold held-out accuracy.

    classifier: "svm" (linear SVM) or "logistic" (logistic regression), on w centred and scaled by one number (so
    the normal is the same direction in W). `orthogonal_to` {name: [D]}: directions projected out of the normal,
    so that an edit along it leaves them unchanged. Each class needs at least `folds` examples. The stats say
    whether the held-out accuracy beats chance (the larger class's share) by CHANCE_SE standard errors.
    """
    if classifier not in CLASSIFIERS:
        raise InputError(f"classifier: {classifier!r} is not one of {', '.join(CLASSIFIERS)}", field="classifier")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise InputError(f"folds: {folds!r}; held-out accuracy needs at least 2 folds", field="folds")
    pos, neg = as_w(w_positive, classes[0]), as_w(w_negative, classes[1])
    if pos.shape[1] != neg.shape[1]:
        raise InputError(f"{classes[1]}: w of {neg.shape[1]} dimensions against {classes[0]}'s {pos.shape[1]}",
                         field="w_negative")
    for what, arr in zip(classes, (pos, neg)):
        if len(arr) < folds:
            raise InputError(f"{what}: {len(arr)} example(s); a fit with {folds}-fold held-out accuracy needs at "
                             f"least {folds} in each class", field=what)
    from sklearn.model_selection import StratifiedKFold

    x = np.concatenate([pos, neg])  # [P + Q, D]
    y = np.r_[np.ones(len(pos), dtype=int), np.zeros(len(neg), dtype=int)]
    mean, scale = x.mean(0), float(x.std()) or 1.0
    x = (x - mean) / scale  # one scale for every coordinate: the normal keeps its direction in W
    correct = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        correct.append(_classifier(classifier, seed).fit(x[train], y[train]).predict(x[test]) == y[test])
    accuracy = float(np.concatenate(correct).mean())
    fold_acc = [float(c.mean()) for c in correct]
    normal = _classifier(classifier, seed).fit(x, y).coef_[0].astype(np.float64)  # [D], points to class 1
    if not np.linalg.norm(normal) > 0:
        raise InputError(f"{name}: the classifier found no separating direction (its normal is zero)", field=name)
    others = sorted((orthogonal_to or {}).items())
    if others:
        normal = orthogonalize(normal, dict(others), name)
    v = normal / np.linalg.norm(normal)
    chance = max(len(pos), len(neg)) / len(x)
    margin = CHANCE_SE * math.sqrt(chance * (1 - chance) / len(x))
    proj_pos, proj_neg = pos @ v, neg @ v  # [P], [Q]
    std = float(np.concatenate([proj_pos, proj_neg]).std())
    stats = {
        "accuracy": _round(accuracy), "fold_accuracy": [_round(a) for a in fold_acc], "folds": int(folds),
        "chance": _round(chance), "better_than_chance": bool(accuracy > chance + margin),
        "classifier": classifier, "classes": {"positive": classes[0], "negative": classes[1]},
        "examples": {"positive": len(pos), "negative": len(neg)},
        # where the class means lie along the direction: moving by `separation` takes the mean negative w to
        # the positive mean's coordinate
        "separation": _round(float(proj_pos.mean() - proj_neg.mean())),
        "orthogonal_to": [n for n, _ in others],
    }
    return Direction(name, v.astype(np.float32), label or name, "fit", std or 1.0, stats)


def orthogonalize(vector: Any, others: Mapping[str, Any], name: str = "direction") -> np.ndarray:
    """`vector` [D] with the span of the `others` ({name: [D]}) projected out (not normalised)."""
    v = np.asarray(vector, dtype=np.float64)
    basis = []
    for other_name, other in others.items():
        o = other.detach().float().cpu().numpy() if hasattr(other, "detach") else np.asarray(other)
        if o.shape != v.shape:
            raise InputError(f"orthogonal_to: direction {other_name!r} is {list(o.shape)}, not [{v.shape[0]}]; only "
                             "single [D] directions can be projected out", field="orthogonal_to")
        basis.append(o.astype(np.float64))
    q, _ = np.linalg.qr(np.stack(basis, 1))  # [D, k]: an orthonormal basis of their span
    out = v - q @ (q.T @ v)
    if np.linalg.norm(out) <= 1e-6 * np.linalg.norm(v):
        raise InputError(f"{name}: lies in the span of {', '.join(others)}; nothing is left once they are projected "
                         "out", field="orthogonal_to")
    return out


def _classifier(kind: str, seed: int):
    if kind == "svm":
        from sklearn.svm import LinearSVC

        return LinearSVC(C=1.0, max_iter=50_000, random_state=seed)
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=5_000)


# ---- w from a Runtime ---------------------------------------------------------------------------------------


def sample_w(rt, count: int, seed: int = 0):
    """w [count, D] = F(z) of the z of seeds seed..seed+count-1 (generate's z, without truncation)."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 2:
        raise InputError(f"samples: {count!r}; principal components need at least 2 samples", field="samples")
    return rt.map(rt.seeds_to_z(range(seed, seed + count)))


def preview(rt, w: Any, directions: Sequence[Direction], sds: Sequence[float] = PREVIEW_SD,
            noise: str = "const", seed: int | None = None, cell: int | None = 128) -> np.ndarray:
    """A labelled grid, uint8 [H, W, 3]: for each direction a title, then one row per face of w [F, D] (or styles
    [F, 2L, D]) edited by sd * (the direction's std), one column per sd in `sds`; images larger than `cell`
    pixels are shrunk to it. Every image of a face has the same noise (`noise`, `seed`: as Runtime.decode)."""
    rows, titles = [], []
    for d in directions:
        strengths = [s * d.std for s in sds]
        edited = [rt.decode_uint8(rt.edit(w, [(d.vector, s)]), noise=noise, seed=seed).cpu().numpy()
                  for s in strengths]
        rows.append([[img[i] for img in edited] for i in range(len(edited[0]))])  # [F][len(sds)] uint8 [R, R, C]
        titles.append(preview_title(d))
    columns = [f"{s:+g} sd" if s else "0" for s in sds]
    return labelled_grid(rows, titles, columns, cell)


def preview_title(d: Direction) -> str:
    """A direction's title in the preview: name, label (when it says more than the name, its default), figures."""
    named = d.name if d.label in ("", d.name) else f"{d.name}: {d.label}"
    return f"{named} - {_summary(d)}; 1 sd = {d.std:.3g}"


def _summary(d: Direction) -> str:
    if d.method == "pca":
        return f"{d.stats['variance']:.1%} of the variance"
    verdict = "" if d.stats["better_than_chance"] else ", NOT better than chance"
    return f"held-out accuracy {d.stats['accuracy']:.1%} ({d.stats['folds']}-fold; chance {d.stats['chance']:.0%}" \
           f"{verdict})"


def labelled_grid(blocks: Sequence[Sequence[Sequence[np.ndarray]]], titles: Sequence[str], columns: Sequence[str],
                  cell: int | None = 128, pad: int = 2) -> np.ndarray:
    """Blocks of rows of equal uint8 [R, R, C] images, each under its title and then the column labels (centred
    over their columns) -> uint8 [H, W, 3] on white."""
    from PIL import Image, ImageDraw, ImageFont

    first = np.asarray(blocks[0][0][0])
    size = first.shape[0] if cell is None else min(cell, first.shape[0])
    font = ImageFont.load_default()
    line = 14  # text strip height, in pixels
    n_cols = len(columns)
    width = pad + n_cols * (size + pad)
    height = sum(2 * line + len(rows) * (size + pad) for rows in blocks) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for rows, title in zip(blocks, titles):
        draw.text((pad, y + 1), _fit_text(draw, title, font, width - 2 * pad), fill="black", font=font)
        y += line
        for j, text in enumerate(columns):
            text = _fit_text(draw, text, font, size)
            x = pad + j * (size + pad) + (size - draw.textlength(text, font=font)) / 2
            draw.text((x, y + 1), text, fill="dimgray", font=font)
        y += line
        for row in rows:
            for j, img in enumerate(row):
                tile = Image.fromarray(np.ascontiguousarray(np.asarray(img)[..., :3].squeeze(-1)
                                                            if img.shape[-1] == 1 else np.asarray(img)[..., :3]))
                if tile.size[0] != size:
                    tile = tile.resize((size, size), Image.LANCZOS)
                canvas.paste(tile.convert("RGB"), (pad + j * (size + pad), y))
            y += size + pad
    return np.asarray(canvas)


def _fit_text(draw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


# ---- the folder ---------------------------------------------------------------------------------------------


def check_name(name: str, field: str = "name") -> str:
    """A direction name: a file stem of letters, digits, '_', '-', '.' (no path, not empty, not hidden)."""
    if not name or not set(name) <= NAME_CHARS or name.startswith("."):
        raise InputError(f"{field}: {name!r} is not a direction name (letters, digits, _, - and . only)", field=field)
    return name


def save_directions(folder: str | Path, directions: Sequence[Direction], data: Mapping[str, Any]) -> Path:
    """Write NAME.npy (float32 [D]) for each direction and add them to FOLDER/directions.json (entries of other
    names already there are kept). `data` describes what they were computed from (model, inputs, counts): the
    file's top-level "data"; an entry made from other data keeps its own "data"."""
    folder = Path(folder)
    for d in directions:
        check_name(d.name)
    folder.mkdir(parents=True, exist_ok=True)
    old = read_info(folder)
    entries = {name: {**entry, "data": entry.get("data", old.get("data", {}))}
               for name, entry in old["directions"].items()}
    for d in directions:
        np.save(folder / f"{d.name}.npy", d.vector.astype(np.float32))
        entries[d.name] = {**d.info(), "data": dict(data)}
    for entry in entries.values():
        if entry["data"] == dict(data):
            del entry["data"]
    methods = sorted({e.get("method", "?") for e in entries.values()})
    record = {"format": FORMAT, "method": methods[0] if len(methods) == 1 else "mixed", "data": dict(data),
              "count": len(entries), "directions": dict(sorted(entries.items()))}
    path = folder / INFO_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_info(folder: str | Path) -> dict[str, Any]:
    """FOLDER/directions.json, checked: {"directions": {name: {"label": str, "range": [lo, hi], ...}}, ...};
    {"directions": {}} when the folder has none (e.g. the official FFHQ set)."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        return {"directions": {}}
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc})", field="directions") from None
    entries = record.get("directions") if isinstance(record, dict) else None
    if not isinstance(entries, dict):
        raise InputError(f"{path}: expected an object with a \"directions\" object of name -> entry",
                         field="directions")
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise InputError(f"{path}: entry {name!r} is not an object", field="directions")
        label, rng = entry.get("label", name), entry.get("range")
        if not isinstance(label, str):
            raise InputError(f"{path}: {name!r} has a label that is not a string", field="directions")
        if rng is not None and not (isinstance(rng, list) and len(rng) == 2
                                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in rng)
                                    and rng[0] <= rng[1]):
            raise InputError(f"{path}: {name!r} has range {rng!r}; expected [low, high], finite numbers, low <= high",
                             field="directions")
    return record


def load_folder(folder: str | Path) -> list[Direction]:
    """The directions of a folder written by `save_directions`, in name order (for previews and notebooks)."""
    folder = Path(folder)
    record = read_info(folder)
    out = []
    for name, entry in sorted(record["directions"].items()):
        try:
            vector = np.load(folder / f"{name}.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{folder / f'{name}.npy'}: not a readable .npy array ({exc})",
                             field="directions") from None
        stats = {k: v for k, v in entry.items() if k not in ("label", "method", "std", "range", "data")}
        out.append(Direction(name, vector.astype(np.float32), entry.get("label", name), entry.get("method", "?"),
                             float(entry.get("std", 1.0)), stats))
    return out


def _round(x: float) -> float:
    return float(f"{x:.6g}")


__all__ = ["CLASSIFIERS", "DEFAULT_RANGE", "INFO_FILE", "PREVIEW_SD", "RANGE_SD", "Direction", "as_w", "check_name",
           "fit_direction", "labelled_grid", "load_folder", "orthogonalize", "preview", "preview_title",
           "principal_directions", "read_info", "sample_w", "save_directions"]
