"""The `alae-rt` command line: info, convert, encode, decode, reconstruct, generate, mix, edit, demo."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alae_rt.errors import AlaeError, InputError

EXIT_USAGE = 2  # bad input of any kind: a one-line message on stderr, no traceback

# ---- small parsers ------------------------------------------------------------------------------------


def parse_int_list(text: str, what: str = "seeds") -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]."""
    values: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise InputError(f"{what}: cannot read {part!r} in {text!r} (use e.g. 0-15 or 1,5,9)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise InputError(f"{what}: range {part!r} runs backwards")
        if hi - lo >= 100_000:
            raise InputError(f"{what}: range {part!r} is too long")
        values.extend(range(lo, hi + 1))
    return values


def parse_direction(text: str) -> tuple[str, float]:
    """'smile=3' or 'path/to/dir.npy=-1.5' -> (name, strength)."""
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise InputError(f"--direction {text!r}: expected NAME=STRENGTH, e.g. smile=3")
    try:
        strength = float(value)
    except ValueError:
        raise InputError(f"--direction {text!r}: strength {value!r} is not a number") from None
    if not np.isfinite(strength):
        raise InputError(f"--direction {text!r}: strength must be finite")
    return name, strength


def load_latents(path: str | Path, latent_size: int, num_styles: int) -> np.ndarray:
    """A .npy of w [N, D], [D] or styles [N, 2L, D], checked for shape and NaN/Inf -> float32 array."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such latent file") from None
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
        raise InputError(f"{path}: expected a float array, got {getattr(arr, 'dtype', type(arr))}")
    if arr.ndim == 1:
        arr = arr[None]
    ok = (arr.ndim == 2 and arr.shape[1] == latent_size) or (
        arr.ndim == 3 and arr.shape[1:] == (num_styles, latent_size))
    if not ok or arr.shape[0] == 0:
        raise InputError(
            f"{path}: latents of shape {list(arr.shape)}; this model takes [N, {latent_size}] or "
            f"[N, {num_styles}, {latent_size}]"
        )
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: holds NaN or Inf values")
    return arr.astype(np.float32)


def out_dir(path: str | Path) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create output directory ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"{out}: output directory is not writable")
    return out


def out_file(path: str | Path, suffix: str) -> Path:
    out = Path(path)
    if out.suffix != suffix:
        raise InputError(f"{out}: the output file must end in {suffix}")
    if out.is_dir():
        raise InputError(f"{out}: is a directory; give a file name ending in {suffix}")
    out_dir(out.parent)
    return out


def progress_bar(args: argparse.Namespace, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=args.quiet, file=sys.stderr, dynamic_ncols=True)


def say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


# ---- the model -------------------------------------------------------------------------------------------


def make_runtime(args: argparse.Namespace, announce: bool = True):
    from alae_rt.runtime import Runtime

    rt = Runtime.load(args.checkpoint, config=args.config, device=args.device, dtype=args.dtype,
                      backend=args.backend, max_batch=args.batch_size, trust_pickle=args.trust_pickle,
                      backend_options=backend_options(args))
    if announce:
        say(args, f"weights: {rt.source}")
    say(args, f"model: {rt!r}")
    return rt


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """--backend-option KEY=VALUE pairs -> backend_options (numbers and true/false converted)."""
    options: dict[str, Any] = {}
    for item in getattr(args, "backend_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--backend-option {item!r}: expected KEY=VALUE, e.g. onnx_dir=onnx/")
        lowered = value.lower()
        if lowered in ("true", "false"):
            options[key] = lowered == "true"
            continue
        for cast in (int, float):
            try:
                options[key] = cast(value)
                break
            except ValueError:
                pass
        else:
            options[key] = value
    return options


def _encode_files(rt, args: argparse.Namespace, paths: list[Path], desc: str = "encode"):
    """Encode image files in batches with a progress bar -> (w [N, D] float32, originals uint8 list)."""
    import torch

    from alae_rt.images import read_image

    ws, originals = [], []
    with progress_bar(args, len(paths), desc) as bar:
        for start in range(0, len(paths), args.batch_size):
            batch = [read_image(p) for p in paths[start:start + args.batch_size]]
            x = rt.prepare_images(batch)
            ws.append(rt.encode(x).float().cpu())
            originals.extend(rt.to_uint8(x))
            bar.update(len(batch))
    return torch.cat(ws), originals


def _decode_batches(rt, args: argparse.Namespace, w, desc: str = "decode", **decode_kwargs) -> np.ndarray:
    """Decode latents in batches with a progress bar -> uint8 [N, R, R, C]."""
    out = []
    with progress_bar(args, len(w), desc) as bar:
        for start in range(0, len(w), args.batch_size):
            part = w[start:start + args.batch_size]
            out.append(rt.to_uint8(rt.decode(part, **decode_kwargs)))
            bar.update(len(part))
    return np.concatenate(out)


def _sources(rt, args: argparse.Namespace, items: Sequence[str], what: str):
    """Latents for a command's inputs: one .npy file, `seeds:SPEC`, or images -> (w, originals or None, names)."""
    import torch

    from alae_rt.images import list_images

    if len(items) == 1 and items[0].endswith(".npy"):
        w = torch.from_numpy(load_latents(items[0], rt.config.latent_size, rt.config.num_styles))
        return w, None, [f"{Path(items[0]).stem}_{i}" for i in range(len(w))]
    if len(items) == 1 and items[0].startswith("seeds:"):
        seeds = parse_int_list(items[0][len("seeds:"):])
        w = rt.truncate(rt.map(rt.seeds_to_z(seeds)), args.psi).float().cpu()
        return w, None, [f"seed{s:04d}" for s in seeds]
    paths = list_images(items)
    w, originals = _encode_files(rt, args, paths, desc=f"encode {what}")
    return w, originals, [f"{i:04d}_{p.stem}" for i, p in enumerate(paths)]


def _save_all(images: np.ndarray, names: Sequence[str], out: Path) -> None:
    from alae_rt.images import save_image

    for img, name in zip(images, names):
        save_image(img, out / f"{name}.png")


def _save_grid(rows, path: Path, args: argparse.Namespace) -> None:
    from alae_rt.images import make_grid, save_image

    save_image(make_grid(rows), path)
    say(args, f"wrote {path}")


def _columns(per_item: Sequence[Sequence[np.ndarray]], per_row: int) -> list[list[np.ndarray]]:
    """Lay out groups of images (e.g. original + reconstruction) side by side, `per_row` groups a row."""
    rows = []
    for start in range(0, len(per_item), per_row):
        rows.append([img for group in per_item[start:start + per_row] for img in group])
    return rows


# ---- commands -------------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from alae_rt.config import resolve_config
    from alae_rt.flops import count_flops, count_params

    if args.preset and args.checkpoint:
        raise InputError("give either --preset or --checkpoint, not both")
    if args.preset:
        cfg, source = resolve_config(args.preset), f"preset {args.preset} (no weights)"
    else:
        from alae_rt.checkpoint import load_checkpoint
        from alae_rt.runtime import default_checkpoint

        path = args.checkpoint or default_checkpoint()
        if path is None:
            raise InputError("no --checkpoint or --preset given, and this install has no bundled default model")
        ckpt = load_checkpoint(path, args.config, trust_pickle=args.trust_pickle)
        cfg, source = ckpt.config, ckpt.source
    params, flops = count_params(cfg), count_flops(cfg)
    info: dict[str, Any] = {
        "weights": source,
        "config": cfg.to_dict(),
        "resolution": cfg.resolution,
        "style_inputs": cfg.num_styles,
        "generator_channels": list(cfg.generator_channels),
        "encoder_channels": [list(c) for c in cfg.encoder_channels],
        "parameters": params,
        "gflops_per_image": {k: round(v / 1e9, 3) for k, v in flops.items()},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = cfg
    print(f"weights:        {source}")
    print(f"config:         {c.name}: L={c.layer_count} startf={c.startf} maxf={c.maxf} D={c.latent_size} "
          f"M={c.mapping_layers} C={c.channels}")
    print(f"resolution:     {c.resolution}x{c.resolution}, {c.num_styles} style inputs")
    print(f"truncation:     psi={c.truncation_psi} cutoff={c.truncation_cutoff}")
    print(f"generator ch.:  {' '.join(map(str, c.generator_channels))}")
    print(f"encoder ch.:    {' '.join(f'{a}->{b}' for a, b in c.encoder_channels)}")
    print("parameters:     " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in params.items()))
    print("GFLOPs/image:   " + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in flops.items()))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from alae_rt.checkpoint import convert

    out = out_file(args.out, ".safetensors")
    ckpt = convert(args.src, out, config=args.config, dtype=_torch_dtype(args.dtype) if args.dtype else None,
                   trust_pickle=args.trust_pickle)
    say(args, f"read {ckpt.source}")
    print(f"wrote {out} ({ckpt.config.name}, {len(ckpt.state)} tensors)")
    return 0


def _torch_dtype(name: str):
    from alae_rt.runtime import parse_dtype

    return parse_dtype(name)


def cmd_encode(args: argparse.Namespace) -> int:
    from alae_rt.images import list_images

    out = out_file(args.out, ".npy")
    paths = list_images(args.images)
    rt = make_runtime(args)
    w, _ = _encode_files(rt, args, paths)
    np.save(out, w.numpy())
    print(f"wrote {out}: w {list(w.shape)} for {len(paths)} image(s), in input order")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    out = out_dir(args.out)
    rt = make_runtime(args)
    import torch

    w = torch.from_numpy(load_latents(args.latents, rt.config.latent_size, rt.config.num_styles))
    images = _decode_batches(rt, args, w, noise=args.noise, seed=args.seed)
    _save_all(images, [f"{i:06d}" for i in range(len(images))], out)
    print(f"wrote {len(images)} image(s) to {out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from alae_rt.images import list_images

    out = out_dir(args.out)
    paths = list_images(args.images)
    rt = make_runtime(args)
    w, originals = _encode_files(rt, args, paths)
    recs = _decode_batches(rt, args, w, noise=args.noise, seed=args.seed)
    _save_all(recs, [f"{i:04d}_{p.stem}" for i, p in enumerate(paths)], out)
    _save_grid(_columns(list(zip(originals, recs)), 4), out / "grid.png", args)
    print(f"wrote {len(recs)} reconstruction(s) and grid.png (original | reconstruction) to {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    out = out_dir(args.out)
    seeds = parse_int_list(args.seeds)
    rt = make_runtime(args)
    images, styles = [], []
    with progress_bar(args, len(seeds), "generate") as bar:
        for start in range(0, len(seeds), args.batch_size):
            part = seeds[start:start + args.batch_size]
            # Mapped and truncated here to keep the styles; noise seeded per seed as Runtime.generate does.
            part_styles = rt.truncate(rt.map(rt.seeds_to_z(part)), args.psi, args.cutoff)
            noise = rt.seed_noise(part) if args.noise == "random" and args.seed is None else args.noise
            images.append(rt.to_uint8(rt.decode(part_styles, noise=noise, seed=args.seed)))
            styles.append(part_styles.float().cpu().numpy())
            bar.update(len(part))
    imgs = np.concatenate(images)
    _save_all(imgs, [f"seed{s:04d}" for s in seeds], out)
    np.save(out / "styles.npy", np.concatenate(styles))
    _save_grid(_columns([[img] for img in imgs], 8), out / "grid.png", args)
    print(f"wrote {len(imgs)} image(s), styles.npy [N, 2L, D] and grid.png to {out}")
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    out = out_dir(args.out)
    rt = make_runtime(args)
    w_a, _, names_a = _sources(rt, args, args.a, "a")
    w_b, _, names_b = _sources(rt, args, args.b, "b")
    kw = {"noise": args.noise, "seed": args.seed}
    row_a = _decode_batches(rt, args, w_a, desc="decode a", **kw)
    row_b = _decode_batches(rt, args, w_b, desc="decode b", **kw)
    blank = np.full_like(row_a[0], 255)
    rows = [[blank, *row_b]]
    with progress_bar(args, len(w_a) * len(w_b), "mix") as bar:
        for i in range(len(w_a)):
            mixed = rt.to_uint8(rt.mix(w_a[i:i + 1], w_b, args.cutoff, **kw))
            _save_all(mixed, [f"mix_{names_a[i]}__{nb}" for nb in names_b], out)
            rows.append([row_a[i], *mixed])
            bar.update(len(w_b))
    _save_grid(rows, out / "grid.png", args)
    print(f"wrote {len(w_a) * len(w_b)} mix(es) and grid.png (rows: a = styles < {args.cutoff}; columns: b) to {out}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    out = out_dir(args.out)
    edits = dict(parse_direction(d) for d in args.direction)
    rt = make_runtime(args)
    if args.directions_dir:
        rt.load_directions(args.directions_dir)
    layers = parse_int_list(args.layers, "--layers") if args.layers else None
    w, originals, names = _sources(rt, args, args.inputs, "inputs")
    edited = rt.edit(w, edits, mode=args.mode, layers=layers).float().cpu()
    kw = {"noise": args.noise, "seed": args.seed}
    recs = _decode_batches(rt, args, w, desc="reconstruct", **kw)
    edits_img = _decode_batches(rt, args, edited, desc="edit", **kw)
    _save_all(edits_img, names, out)
    np.save(out / "edited.npy", edited.numpy())
    groups = [[o, r, e] for o, r, e in zip(originals, recs, edits_img)] if originals else list(zip(recs, edits_img))
    _save_grid(_columns(groups, 2), out / "grid.png", args)
    cols = "original | reconstruction | edited" if originals else "decoded | edited"
    print(f"wrote {len(edits_img)} edited image(s), edited.npy and grid.png ({cols}) to {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from alae_rt.bench import OPS, format_table, run_bench, write_report

    if args.preset and args.checkpoint:
        raise InputError("give either --preset or --checkpoint, not both")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    batches = sorted({b for spec in (args.batch or ["1,4,16"]) for b in parse_int_list(spec, "--batch")})
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    report = run_bench(
        config=args.config if args.checkpoint else (args.preset or "ffhq-1024"),
        checkpoint=args.checkpoint,
        backends=None if args.backends == "all" else split(args.backends),
        dtypes=split(args.dtypes) if args.dtypes else None,
        batches=batches,
        ops=split(args.ops) if args.ops else OPS,
        device=args.device,
        min_reps=args.min_reps,
        min_time_s=args.min_time,
        progress=lambda total, desc: progress_bar(args, total, desc),
        log=lambda m: say(args, m),
    )
    print(format_table(report))
    if not args.no_save:
        paths = write_report(report, args.out)
        for path in paths:
            print(f"wrote {path}")
        if not any(p.suffix == ".png" for p in paths):
            say(args, "no plot: matplotlib is not installed (pip install 'alae-rt[bench]')")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from alae_rt.demo import run_demo

    out = out_dir(args.out)
    rt = make_runtime(args, announce=False)  # the demo states the weights on stdout itself
    run_demo(rt, args.faces, out, count=args.count, strength=args.strength, directions_dir=args.directions_dir,
             progress=lambda total, desc: progress_bar(args, total, desc), say=lambda m: print(m))
    return 0


# ---- parser -------------------------------------------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("-c", "--checkpoint", metavar="PATH",
                   help="weights: an alae-rt .safetensors or an official ALAE .pth (default: the bundled model)")
    g.add_argument("--config", metavar="CFG",
                   help="preset name or official YAML, when the checkpoint's own/inferred config should be overridden")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="compute dtype (default fp32)")
    g.add_argument("--backend", default="auto",
                   help="auto (the fastest available), eager, compile, triton, onnxruntime, tensorrt, official")
    g.add_argument("--backend-option", action="append", metavar="KEY=VALUE",
                   help="an option for the backend, e.g. onnx_dir=onnx/ (onnxruntime) or engine_dir=engines/ "
                        "(tensorrt); repeat for several")
    g.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per forward pass (default 8)")
    g.add_argument("--trust-pickle", action="store_true",
                   help="allow a .pth that holds Python objects besides tensors (only for files you trust)")


def add_noise_args(p: argparse.ArgumentParser, default: str = "const") -> None:
    p.add_argument("--noise", default=default, choices=["const", "random", "none"],
                   help=f"per-layer noise: const (fixed maps, deterministic), random, none (default {default})")
    p.add_argument("--seed", type=int, default=None, help="seed for --noise random")


# Subcommands that live in the other packages, imported only when they run (the core never imports them):
# name -> (module, one-line help). The module has `add_parser(subparsers, name, help)`, which adds the
# subcommand's arguments and sets `func`; it may use add_model_args, make_runtime, progress_bar, ... above.
EXTERNAL_COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("alae_rt.cli.client", "serve the model over gRPC, with dynamic batching, health, metrics, auth and TLS"),
    "client": ("alae_rt.cli.client", "call an alae-rt server: info, health, encode, reconstruct, generate, edit, mix"),
    "export": ("alae_rt.export.cli", "export to ONNX or TensorRT, or write a Triton Inference Server model repository"),
    "train": ("alae_rt.training.cli", "train a StyleALAE with the ALAE algorithm on a folder of images"),
    "digits": ("alae_rt.training.mlp", "MLP ALAE on scikit-learn digits: 1-NN / linear-SVM accuracy of w"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; `command` names the subcommand about to run, so that only its package is imported."""
    parser = argparse.ArgumentParser(
        prog="alae-rt",
        description="StyleALAE runtime: encode photos into W, reconstruct, edit, mix and generate images. "
                    "Every model command takes --checkpoint (ours or an official ALAE .pth) and writes to -o/--out.",
    )
    parser.add_argument("--version", action="version", version=f"alae-rt {_version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, func, model: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if model:
            add_model_args(p)
        return p

    p = add("info", "show a model's config, parameter counts and GFLOPs per encode/decode", cmd_info, model=False)
    p.add_argument("-c", "--checkpoint", metavar="PATH", help="a checkpoint to describe (default: the bundled model)")
    p.add_argument("--preset", help="describe a preset instead of a checkpoint")
    p.add_argument("--config", metavar="CFG", help="preset name or official YAML for the checkpoint")
    p.add_argument("--trust-pickle", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("convert", "convert an official ALAE .pth (EMA weights) to an alae-rt .safetensors", cmd_convert,
            model=False)
    p.add_argument("src", help="official .pth (or an alae-rt .safetensors to re-save)")
    p.add_argument("-o", "--out", required=True, help="output .safetensors file")
    p.add_argument("--config", metavar="CFG", help="preset name or official YAML (default: inferred from shapes)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="store the weights in this dtype")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a .pth that holds Python objects besides tensors (only for files you trust)")

    p = add("encode", "encode images into W: writes w [N, D] as .npy, rows in input order", cmd_encode)
    p.add_argument("images", nargs="+", help="image files or directories")
    p.add_argument("-o", "--out", required=True, help="output .npy file")

    p = add("decode", "decode latents (.npy of [N, D] or [N, 2L, D]) into PNG images", cmd_decode)
    p.add_argument("latents", help=".npy file")
    p.add_argument("-o", "--out", required=True, help="output directory")
    add_noise_args(p)

    p = add("reconstruct", "encode and decode images: PNGs and a side-by-side grid", cmd_reconstruct)
    p.add_argument("images", nargs="+", help="image files or directories")
    p.add_argument("-o", "--out", required=True, help="output directory")
    add_noise_args(p)

    p = add("generate", "generate images from seeds (z -> F -> truncation -> G)", cmd_generate)
    p.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-15 or 1,5,9 (default 0-7)")
    p.add_argument("--psi", type=float, default=None, help="truncation psi (default: the model's, 0.7)")
    p.add_argument("--cutoff", type=int, default=None, help="truncation cutoff in style inputs (default: 8)")
    p.add_argument("-o", "--out", required=True, help="output directory")
    add_noise_args(p, default="random")

    sources = "image files/directories, one .npy of latents, or seeds:SPEC (e.g. seeds:0-3)"
    p = add("mix", "style mixing: coarse styles from A, the rest from B; writes a grid", cmd_mix)
    p.add_argument("--a", nargs="+", required=True, help=f"sources of the coarse styles: {sources}")
    p.add_argument("--b", nargs="+", required=True, help=f"sources of the fine styles: {sources}")
    p.add_argument("--cutoff", type=int, default=4, help="style inputs < cutoff come from A (default 4)")
    p.add_argument("--psi", type=float, default=None, help="truncation psi for seeds: sources")
    p.add_argument("-o", "--out", required=True, help="output directory")
    add_noise_args(p)

    p = add("edit", "move images or latents along W-space directions and decode them", cmd_edit)
    p.add_argument("inputs", nargs="+", help=sources)
    p.add_argument("--direction", action="append", required=True, metavar="NAME=STRENGTH",
                   help="a direction and its strength; NAME is a .npy file or a name from --directions-dir "
                        "(e.g. smile=3); repeat for several")
    p.add_argument("--directions-dir", metavar="DIR",
                   help="folder of direction .npy files (official FFHQ direction_<k>.npy also answer to smile, ...)")
    p.add_argument("--mode", choices=["add", "set"], default="add",
                   help="add: w + s*d; set: the coordinate of w - dlatent_avg along d becomes s (default add)")
    p.add_argument("--layers", help="style inputs to edit, e.g. 0-7 (default: all)")
    p.add_argument("--psi", type=float, default=None, help="truncation psi for seeds: sources")
    p.add_argument("-o", "--out", required=True, help="output directory")
    add_noise_args(p)

    p = add("bench", "time encode/decode/reconstruct/map per backend, dtype and batch against the official way",
            cmd_bench, model=False)
    p.add_argument("--preset", help="model preset with random weights (default ffhq-1024)")
    p.add_argument("-c", "--checkpoint", metavar="PATH", help="time a checkpoint instead of a preset")
    p.add_argument("--config", metavar="CFG", help="preset name or official YAML for the checkpoint")
    p.add_argument("--backends", default="all",
                   help="comma-separated backends, or all available (default); the official-order baseline "
                        "always runs")
    p.add_argument("--dtypes", help="comma-separated: fp32,fp16,bf16 (default fp32,bf16 on CPU, all on GPU)")
    p.add_argument("--batch", action="append", metavar="N[,N...]", help="batch sizes (default 1,4,16)")
    p.add_argument("--ops", help=f"comma-separated from {','.join(('encode', 'decode', 'reconstruct', 'map'))}")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--min-reps", type=int, default=5, help="timed repetitions at least (default 5)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls at least (default 1)")
    p.add_argument("-o", "--out", default="benchmarks/results", help="folder for JSON/markdown/PNG")
    p.add_argument("--no-save", action="store_true", help="print the table only")

    p = add("demo", "reconstruct and edit sample faces into one image grid", cmd_demo)
    p.add_argument("--faces", required=True, help="folder of face images")
    p.add_argument("--count", type=int, default=8, help="faces to show (default 8)")
    p.add_argument("--strength", type=float, default=None,
                   help="edit strength (default: 3 for the official directions, 2 std of the data for PCA)")
    p.add_argument("--directions-dir", metavar="DIR",
                   help="official FFHQ principal directions; used when the model's latent size matches")
    p.add_argument("-o", "--out", default="out/demo", help="output directory (default out/demo)")

    for name, (module, help_text) in EXTERNAL_COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)  # listed in --help, loaded when it runs
    return parser


def _version() -> str:
    from alae_rt import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        parser.error("--batch-size must be >= 1")
    try:
        return args.func(args)
    except AlaeError as exc:
        print(f"alae-rt: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("alae-rt: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("alae-rt: error: out of memory; lower --batch-size", file=sys.stderr)
    except OSError as exc:  # writing outputs: disk full, permissions, ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"alae-rt: error: {where}{exc.strerror or exc}", file=sys.stderr)
    except RuntimeError as exc:
        if "out of memory" not in str(exc):
            raise
        print("alae-rt: error: out of memory; lower --batch-size", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
