"""`alae-rt directions pca | fit`: make edit directions for a model; the math is alae_rt.directions.

Each run writes NAME.npy files and directions.json into the output folder (the folder `edit --directions-dir`,
`serve --directions-dir` and Runtime.load_directions read) and a labelled preview grid: faces x strengths.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alae_rt.cli.options import (
    NOISE_MODES,
    SOURCES_HELP,
    add_command,
    add_out_arg,
    make_runtime,
    out_dir,
    progress_bar,
    require,
    say,
)
from alae_rt.cli.sources import Sources, read_sources
from alae_rt.errors import InputError

HELP = "make edit directions for a model: principal components of W, or from labelled examples"
DEFAULT_COUNT = 8
DEFAULT_FOLDS = 5


def add_parsers(sub) -> None:
    p = sub.add_parser("directions", help=HELP, description=HELP + ". Each run writes NAME.npy files, "
                       "directions.json (labels, method, figures, strength range) and a preview grid into -o DIR, "
                       "the folder that `edit --directions-dir` and `serve --directions-dir` read.")
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)

    p = add_command(methods, "pca", "principal components of W (GANSpace in W) over encoded images, given w or "
                    "sampled z -> F: the first K unit directions with their explained variance", cmd_pca)
    p.add_argument("inputs", nargs="*", help="image files or folders, or one .npy of w [N, D] (or --samples)")
    p.add_argument("--samples", type=int, metavar="N", help="use the w = F(z) of N sampled z instead of inputs "
                   "(the z of seeds --seed .. --seed + N - 1, as generate draws them)")
    p.add_argument("--seed", type=int, default=0, help="first seed of --samples (default 0)")
    p.add_argument("-k", "--count", type=int, default=DEFAULT_COUNT, metavar="K",
                   help=f"directions to keep (default {DEFAULT_COUNT}); at most D, and fewer than the samples")
    p.add_argument("--prefix", default="pc", help="direction names: PREFIX00, PREFIX01, ... (default pc)")
    add_out_arg(p, "directions folder (made if missing; directions.json there is updated)", metavar="DIR")
    _add_preview_args(p, default_faces=3)

    p = add_command(methods, "fit", "a direction from labelled examples: the unit normal of a linear classifier "
                    "on w (InterFaceGAN), with its k-fold held-out accuracy", cmd_fit)
    g = p.add_argument_group("examples (--positive and --negative, or --labels)")
    g.add_argument("--positive", nargs="+", metavar="SRC", help=f"examples with the attribute: {SOURCES_HELP}")
    g.add_argument("--negative", nargs="+", metavar="SRC", help=f"examples without it: {SOURCES_HELP}")
    g.add_argument("--labels", metavar="CSV", help="a CSV with a header: columns file (an image, relative to the "
                   "CSV's folder) and label; with --latents, only label, one row per latent in order")
    g.add_argument("--latents", metavar="W.npy", help="w [N, D] that --labels labels, row by row")
    g.add_argument("--positive-label", metavar="LABEL", help="with --labels: the positive class (the rest are "
                   "negative); by default there must be two labels, and the second in sorted order is positive")
    p.add_argument("--name", required=True, help="the direction's name: NAME.npy, and --direction NAME=S in edit")
    p.add_argument("--label", help="a description for directions.json and the preview (default: NAME)")
    p.add_argument("--classifier", choices=("svm", "logistic"), default="svm",
                   help="linear SVM or logistic regression (default svm)")
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                   help=f"k of the k-fold held-out accuracy; each class needs at least k examples (default "
                        f"{DEFAULT_FOLDS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold split (default 0)")
    p.add_argument("--orthogonal-to", nargs="+", metavar="NAME", default=[],
                   help="project these directions out (edit one attribute, keep these): names in the output "
                        "folder, --directions-dir or the model's bundled set, or .npy files")
    p.add_argument("--directions-dir", metavar="DIR", help="a folder of directions that --orthogonal-to names")
    add_out_arg(p, "directions folder (made if missing; directions.json there is updated)", metavar="DIR")
    _add_preview_args(p, default_faces=4)


def _add_preview_args(p: argparse.ArgumentParser, default_faces: int) -> None:
    g = p.add_argument_group("preview grid")
    g.add_argument("--faces", nargs="+", metavar="SRC", help=f"faces to show: {SOURCES_HELP} (default: the first "
                   "of the data)")
    g.add_argument("--preview", type=int, default=default_faces, metavar="N",
                   help=f"faces shown per direction (default {default_faces})")
    g.add_argument("--preview-size", type=int, default=128, metavar="PX",
                   help="largest image size in the grid; larger outputs are shrunk (default 128)")
    g.add_argument("--psi", type=float, default=None, help="truncation psi for seeds: faces")
    g.add_argument("--noise", default="const", choices=NOISE_MODES,
                   help="per-layer noise of the preview: const (fixed maps), random (from --seed), none (default "
                        "const)")


# ---- inputs ------------------------------------------------------------------------------------------------
# Sources are read before the model loads (a missing file or folder is reported at once), checked against it after.


def _w(rt, args: argparse.Namespace, src: Sources, what: str):
    """Sources -> w [N, D] (images encoded, seeds mapped through F without truncation, or .npy w as given)."""
    src = src.checked(rt.config.latent_size, rt.config.num_styles)
    if src.latents is not None:
        if src.latents.ndim != 2:
            raise InputError(f"{src.where}: styles {list(src.latents.shape)}; directions are made from w [N, D]")
        return src.latents
    if src.seeds is not None:
        return rt.map(rt.seeds_to_z(src.seeds))
    with progress_bar(args, len(src.paths), f"encode {what}") as bar:
        return rt.encode(src.paths, progress=bar.update)


@dataclass
class Examples:
    """fit's examples as read: positive and negative sources, or one source and a label per row."""

    positive: Sources | None = None
    negative: Sources | None = None
    labelled: Sources | None = None
    is_positive: np.ndarray | None = None  # bool [N], with `labelled`
    classes: tuple[str, str] = ("positive", "negative")
    data: dict = field(default_factory=dict)  # what directions.json records of them


def _read_examples(args: argparse.Namespace) -> Examples:
    """--positive/--negative or --labels (with --latents) -> Examples; every error before the model loads."""
    folders = args.positive is not None or args.negative is not None
    if folders and (args.labels or args.latents):
        raise InputError("give --positive and --negative, or --labels, not both")
    if folders:
        if args.positive is None or args.negative is None:
            raise InputError("--positive and --negative go together: a direction needs two classes")
        if args.positive_label is not None:
            raise InputError("--positive-label goes with --labels")
        return Examples(read_sources(args.positive), read_sources(args.negative),
                        classes=(" ".join(args.positive), " ".join(args.negative)),
                        data={"positive": args.positive, "negative": args.negative})
    if not args.labels:
        raise InputError("no examples: give --positive and --negative, or --labels")
    rows = _read_labels(Path(args.labels), needs_file=args.latents is None)
    labels = [label for _, label in rows]
    names = sorted(set(labels), key=_label_key)
    if len(names) < 2:
        raise InputError(f"{args.labels}: one class ({names[0]}); a direction needs two")
    if args.positive_label is not None:
        if args.positive_label not in names:
            raise InputError(f"{args.labels}: no row has label {args.positive_label!r} (labels: {', '.join(names)})")
        positive = args.positive_label
    elif len(names) != 2:
        raise InputError(f"{args.labels}: {len(names)} classes ({', '.join(names)}); a direction needs two (or "
                         "--positive-label to fit one against the rest)")
    else:
        positive = names[1]
    if args.latents:
        src = read_sources([args.latents])
        if src.latents is None:
            raise InputError(f"--latents {args.latents}: expected a .npy file of w [N, D]")
        if len(src.names) != len(rows):
            raise InputError(f"{args.labels}: {len(rows)} label(s) for the {len(src.names)} latents of {args.latents}")
    else:
        base = Path(args.labels).parent
        src = read_sources([str(base / f) for f, _ in rows])
        if len(src.names) != len(rows):  # a row named a folder
            raise InputError(f"{args.labels}: {len(rows)} row(s) name {len(src.names)} images; name one image a row")
    negative = "not " + positive if len(names) > 2 else next(n for n in names if n != positive)
    return Examples(labelled=src, is_positive=np.array([label == positive for label in labels]),
                    classes=(positive, negative),
                    data={"labels": args.labels, **({"latents": args.latents} if args.latents else {})})


def _labelled_w(rt, args: argparse.Namespace, ex: Examples):
    """Examples -> (w_positive, w_negative) on the host."""
    if ex.labelled is None:
        return _host(_w(rt, args, ex.positive, "positive")), _host(_w(rt, args, ex.negative, "negative"))
    w = _host(_w(rt, args, ex.labelled, "labelled"))
    return w[ex.is_positive], w[~ex.is_positive]


def _read_labels(path: Path, needs_file: bool) -> list[tuple[str, str]]:
    """A labels CSV -> [(file or "", label)], in file order."""
    try:
        with path.open(newline="") as f:
            table = [[cell.strip() for cell in row] for row in csv.reader(f) if any(c.strip() for c in row)]
    except FileNotFoundError:
        raise InputError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from None
    header = table[0] if table else []
    if "label" not in header or (needs_file and "file" not in header):
        want = "file and label" if needs_file else "label"
        raise InputError(f"{path}: expected a header with columns {want}, got {', '.join(header) or 'nothing'}")
    if len(table) < 2:
        raise InputError(f"{path}: no rows under the header")
    at_label, at_file = header.index("label"), header.index("file") if "file" in header else None
    rows = []
    for i, row in enumerate(table[1:], start=2):
        label = row[at_label] if at_label < len(row) else ""
        file = row[at_file] if at_file is not None and at_file < len(row) else ""
        if not label or (needs_file and not file):
            raise InputError(f"{path}: row {i} lacks a {'file or ' if needs_file else ''}label")
        rows.append((file, label))
    return rows


def _label_key(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _read_preview(args: argparse.Namespace) -> Sources | None:
    """The preview options checked, and --faces read."""
    if args.preview < 1:
        raise InputError(f"--preview must be >= 1, got {args.preview}")
    if args.preview_size < 8:
        raise InputError(f"--preview-size must be >= 8, got {args.preview_size}")
    return read_sources(args.faces) if args.faces else None


def _preview_faces(rt, args: argparse.Namespace, faces: Sources | None, default):
    """The faces of the preview: --faces (images, .npy, seeds:SPEC with --psi), else the first rows of `default`."""
    if faces is None:
        return default[:args.preview]
    src = faces.checked(rt.config.latent_size, rt.config.num_styles)
    if src.latents is not None:
        return src.latents[:args.preview]
    if src.seeds is not None:
        return rt.seed_styles(src.seeds[:args.preview], truncation_psi=args.psi)
    return rt.encode(src.paths[:args.preview])


def _write_preview(rt, args: argparse.Namespace, faces, made: list, path: Path) -> None:
    from alae_rt.directions import preview
    from alae_rt.images import save_image

    say(args, f"preview: {len(faces)} face(s) x {len(made)} direction(s)")
    save_image(preview(rt, faces, made, noise=args.noise, seed=args.seed, cell=args.preview_size), path)


def _model(args: argparse.Namespace, rt) -> dict:
    """What directions.json says about the model: as the user named it, never a path of this machine."""
    return {"model": args.checkpoint or "bundled default model", "config": rt.config.name,
            "latent_size": rt.config.latent_size}


# ---- commands ----------------------------------------------------------------------------------------------


def cmd_pca(args: argparse.Namespace) -> int:
    from alae_rt.directions import check_name, principal_directions, sample_w, save_directions

    faces = _read_preview(args)
    check_name(f"{args.prefix}00", "--prefix")
    if bool(args.inputs) == (args.samples is not None):
        raise InputError("give images (or one .npy of w) or --samples N, one of the two")
    if args.count < 1:
        raise InputError(f"--count must be >= 1, got {args.count}")
    if args.samples is not None and args.samples < 2:
        raise InputError(f"--samples must be >= 2 (principal components need a spread), got {args.samples}")
    src = read_sources(args.inputs) if args.inputs else None
    out = out_dir(args.out)
    rt = make_runtime(args)
    d = rt.config.latent_size
    if args.count > d:
        raise InputError(f"--count {args.count}: larger than the model's latent size D = {d}")
    if src is None:
        w = sample_w(rt, args.samples, args.seed)
        source, data = f"--samples {args.samples}", {"samples": args.samples, "seed": args.seed}
    else:
        w = _w(rt, args, src, "inputs")
        source, data = " ".join(args.inputs), {"inputs": args.inputs}
    made = principal_directions(w, args.count, prefix=args.prefix, source=source)
    data = {**_model(args, rt), **data, "count": len(w)}
    info = save_directions(out, made, data)
    shares = [m.stats["variance"] for m in made]
    for m in made:
        print(f"{m.name}: {m.stats['variance']:.2%} of the variance, 1 sd = {m.std:.4g}")
    print(f"the {len(made)} directions explain {sum(shares):.2%} of the variance of the {len(w)} w")
    grid = out / "preview_pca.png"
    _write_preview(rt, args, _preview_faces(rt, args, faces, w), made, grid)
    print(f"wrote {len(made)} direction(s), {info.name} and {grid.name} (rows: faces per direction; columns: "
          f"-3..+3 sd) to {out}")
    _note_older(args, info, made)
    return 0


def _note_older(args: argparse.Namespace, info: Path, made) -> None:
    """Say which directions of the folder came from an earlier run (kept: a folder collects directions), so that a
    PCA set of fewer components does not pass for a whole set with older, non-orthogonal ones beside it."""
    from alae_rt.directions import read_info

    new = {m.name for m in made}
    older = sorted(name for name in read_info(info.parent)["directions"] if name not in new)
    if older:
        say(args, f"note: {info.parent} also holds {', '.join(older)} from earlier runs (other data; kept, listed in "
                  f"{info.name}); write to a new folder for a set of these alone")


def cmd_fit(args: argparse.Namespace) -> int:
    from alae_rt.directions import check_name, fit_direction, save_directions

    require("sklearn", "directions fit")  # the classifier and its folds: before the model loads and encodes
    faces = _read_preview(args)
    check_name(args.name, "--name")
    if args.folds < 2:
        raise InputError(f"--folds must be >= 2, got {args.folds}")
    examples = _read_examples(args)
    out = out_dir(args.out)
    rt = make_runtime(args)
    others = _orthogonal_to(rt, args, out)
    pos, neg = _labelled_w(rt, args, examples)
    made = fit_direction(pos, neg, args.name, args.label, classifier=args.classifier, folds=args.folds,
                         seed=args.seed, orthogonal_to=others, classes=examples.classes)
    s = made.stats
    info = save_directions(out, [made], {**_model(args, rt), **examples.data})
    print(f"{made.name}: held-out accuracy {s['accuracy']:.1%} ({s['folds']}-fold, {len(pos)} positive / {len(neg)} "
          f"negative; chance {s['chance']:.1%}); class means {s['separation']:.4g} apart along it, 1 sd = "
          f"{made.std:.4g}")
    if not s["better_than_chance"]:
        say(args, f"warning: {made.name} does not separate its classes better than chance: the examples may not "
                  "differ in w, or there are too few of them")
    half = max(1, args.preview // 2)
    default = np.concatenate([neg[:half], pos[:args.preview - half]])  # negatives first
    grid = out / f"preview_{made.name}.png"
    _write_preview(rt, args, _preview_faces(rt, args, faces, default), [made], grid)
    print(f"wrote {made.name}.npy, {info.name} and {grid.name} (rows: faces; columns: -3..+3 sd) to {out}")
    return 0


def _orthogonal_to(rt, args: argparse.Namespace, out: Path) -> dict:
    """--orthogonal-to names -> {name: [D] tensor}, looked up in --directions-dir, the output folder, the model's
    bundled directions, or as .npy files."""
    if not args.orthogonal_to:
        return {}
    from alae_rt.directions import INFO_FILE

    for folder in (args.directions_dir, out):
        if folder is not None and (Path(folder).is_dir() and any(Path(folder).glob("*.npy"))
                                   or (Path(folder) / INFO_FILE).is_file()):
            rt.load_directions(folder)
    # The Runtime's own reading of a direction (a loaded name or a .npy file, shape and values checked).
    return {name: rt._direction(name, name, field="--orthogonal-to") for name in args.orthogonal_to}


def _host(w) -> np.ndarray:
    return w.float().cpu().numpy() if hasattr(w, "cpu") else np.asarray(w, dtype=np.float32)
