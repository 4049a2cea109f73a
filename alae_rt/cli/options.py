"""What every front end shares: the option groups (model, noise, sources, outputs), small parsers, output paths,
progress bars and the Runtime made from the options. Torch loads only inside make_runtime."""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from alae_rt.errors import InputError

DTYPES = ("fp32", "fp16", "bf16")
NOISE_MODES = ("const", "random", "none")
TRUST_PICKLE_HELP = "allow a .pth that holds Python objects besides tensors (only for files you trust)"
SOURCES_HELP = "image files/directories, one .npy of latents, or seeds:SPEC (e.g. seeds:0-3)"

# ---- small parsers ------------------------------------------------------------------------------------


def parse_int_list(text: str, what: str = "seeds", unique: bool = False) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]; unique: a value given twice is an error (seeds name the output
    files: a repeated seed would overwrite its own image)."""
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
    if unique and len(set(values)) < len(values):
        twice = next(v for v, n in Counter(values).items() if n > 1)
        raise InputError(f"{what}: {twice} is given more than once in {text!r} (each names one output image)")
    return values


def parse_seeds(text: str, what: str = "seeds") -> list[int]:
    """A seed list ('0-3,7'), each seed named once and within the Runtime's range: checked before a model loads."""
    from alae_rt.latents import check_seed

    return [check_seed(s, what) for s in parse_int_list(text, what, unique=True)]


def check_input_options(args: argparse.Namespace) -> None:
    """The options whose rule needs no model (--psi, --steps), by the Runtime's rules, before a model loads or a
    server is called: a bad value costs nothing and is named as the option (the errors' fields map to options)."""
    from alae_rt.latents import check_psi, check_steps

    if getattr(args, "psi", None) is not None:
        check_psi(args.psi)
    if getattr(args, "steps", None) is not None:
        check_steps(args.steps)


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


def _int_in(text: str, what: str, low: int, high: int | None = None) -> int:
    """An argparse type's check: an integer in [low, high] (the subcommand's own usage line reports a bad one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}" if high is None else
                                         f"must be in {low}..{high}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _int_in(text, "an integer", 1)


def port_number(text: str) -> int:
    """A TCP port, 0..65535 (0: any free port)."""
    return _int_in(text, "a port number", 0, 65535)


def server_address(text: str) -> str:
    """HOST:PORT ([IPv6]:PORT; or a unix: socket path, as gRPC takes it), checked before any connection is tried."""
    if text.startswith("unix:"):
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or host == "[]" or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (port 1..65535), e.g. 127.0.0.1:50051, got {text!r}")
    return text


def seconds(text: str) -> float:
    """A finite, non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0, got 0")
    return value


def parse_directions(items: list[str]) -> list[tuple[str, float]]:
    """Every --direction NAME=STRENGTH in order; a NAME given twice is refused (which strength was meant?)."""
    edits = [parse_direction(item) for item in items]
    seen: dict[str, float] = {}
    for name, strength in edits:
        if name in seen:
            raise InputError(f"--direction {name!r} is given twice ({seen[name]:g} and {strength:g}); give it once, "
                             f"e.g. {name}={seen[name] + strength:g} for the sum")
        seen[name] = strength
    return edits


def parse_layers(args: argparse.Namespace) -> list[int] | None:
    """--layers SPEC -> style indices, or None (all of them)."""
    return parse_int_list(args.layers, "--layers") if args.layers else None


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


# ---- outputs and messages ----------------------------------------------------------------------------------


# Output folders this process made (deepest first): a command that fails removes those it left empty.
_MADE_DIRS: list[Path] = []


def out_dir(path: str | Path) -> Path:
    """An output folder, made if missing; errors say why it cannot be written."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create output directory ({exc.strerror})") from None
    _MADE_DIRS.extend(missing)
    # A file made and removed: os.access says yes to root for folders no file can be made in (/proc, read-only
    # mounts), and the work would be done before the write failed.
    try:
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        raise InputError(f"{out}: output directory is not writable ({exc.strerror})") from None
    return out


def out_file(path: str | Path, suffix: str) -> Path:
    """An output file ending in `suffix`, in a folder made if missing."""
    out = Path(path)
    if out.suffix != suffix:
        raise InputError(f"{out}: the output file must end in {suffix}")
    if out.is_dir():
        raise InputError(f"{out}: is a directory; give a file name ending in {suffix}")
    out_dir(out.parent)
    return out


def made_dirs_mark() -> int:
    return len(_MADE_DIRS)


def remove_empty_outputs(mark: int) -> None:
    """Remove the output folders made since `mark` that are still empty (a failed command leaves no husk)."""
    made, _MADE_DIRS[mark:] = _MADE_DIRS[mark:], []
    for folder in made:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty


def save_images(images: np.ndarray, names: list[str], out: Path) -> None:
    """uint8 [N, R, R, C] -> OUT/NAME.png, one file per name."""
    from alae_rt.images import save_image

    for img, name in zip(images, names):
        save_image(img, out / f"{name}.png")


def progress_bar(args: argparse.Namespace, total: int, desc: str, unit: str = "img"):
    """A tqdm bar on stderr (off with -q); pass its `update` as a Runtime call's `progress`."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=args.quiet, file=sys.stderr, dynamic_ncols=True)


def say(args: argparse.Namespace, message: str) -> None:
    """A note on stderr, unless -q; printed above a progress bar that is showing, not onto it."""
    if getattr(args, "quiet", False):
        return
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


def host(t) -> np.ndarray:
    """A tensor of the Runtime's (any device, any dtype) -> float32 numpy, for saving."""
    return t.float().cpu().numpy()


def require(module: str, command: str, extra: str = "train") -> None:
    """A clear error, before any work, when an optional dependency of an extra is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise InputError(f"alae-rt {command} needs {module}: pip install 'alae-rt[{extra}]'")


# ---- the model -------------------------------------------------------------------------------------------


def make_runtime(args: argparse.Namespace, announce: bool = True):
    """The Runtime the model options describe; --batch-size is its max_batch, the chunk its calls run in."""
    from alae_rt.runtime import Runtime

    rt = Runtime.load(args.checkpoint, config=args.config, device=args.device, dtype=args.dtype,
                      backend=args.backend, max_batch=args.batch_size, trust_pickle=args.trust_pickle,
                      backend_options=backend_options(args))
    if announce:
        say(args, f"weights: {rt.source}")
    say(args, f"model: {rt!r}")
    if rt.backend.name == "compile":
        say(args, COMPILE_NOTE)
    return rt


COMPILE_NOTE = ("backend compile: compiling on the first call of each batch size (first call only: tens of seconds "
                "on a small CPU, cached on disk for later runs)...")


def set_threads(threads: int | None) -> None:
    """--threads N: torch's CPU threads (None: torch's choice)."""
    if threads is None:
        return
    if threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


# ---- option groups -----------------------------------------------------------------------------------------
# Declared once here, used by the local commands, `client`, `serve`, `export` and `train`.


def add_quiet_arg(p: argparse.ArgumentParser) -> None:
    """-q/--quiet after the subcommand too (`alae-rt encode -q ...`); SUPPRESS keeps a -q given before it."""
    try:
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bars or notes on stderr")
    except argparse.ArgumentError:  # the command has its own -q
        pass
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                add_quiet_arg(child)


def add_command(sub, name: str, help_text: str, func, model: bool = True) -> argparse.ArgumentParser:
    """A subcommand whose description is its help line; `model`: it takes the model options."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(func=func)
    if model:
        add_model_args(p)
    return p


def add_checkpoint_args(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, checkpoint_help: str | None = None,
                        config_help: str | None = None, trust_pickle: bool = True,
                        trust_pickle_help: str = TRUST_PICKLE_HELP) -> None:
    """-c/--checkpoint, --config and (unless trust_pickle=False) --trust-pickle."""
    p.add_argument("-c", "--checkpoint", metavar="PATH", help=checkpoint_help or
                   "weights: an alae-rt .safetensors or an official ALAE .pth (default: the bundled model)")
    p.add_argument("--config", metavar="CFG", help=config_help or
                   "preset name or official YAML, when the checkpoint's own/inferred config should be overridden")
    if trust_pickle:
        add_trust_pickle_arg(p, trust_pickle_help)


def add_trust_pickle_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup,
                         help_text: str = TRUST_PICKLE_HELP) -> None:
    p.add_argument("--trust-pickle", action="store_true", help=help_text)


def add_device_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str | None = None) -> None:
    p.add_argument("--device", default="auto", help=help_text or "cpu, cuda, cuda:N or auto (default: auto)")


def add_threads_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, default: int | None = None,
                    help_text: str = "torch CPU threads (default: torch's choice)") -> None:
    p.add_argument("--threads", type=int, default=default, metavar="N", help=help_text)


def add_model_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The "model" group of every command that runs a Runtime: weights, device, dtype, backend, batch size."""
    g = p.add_argument_group("model")
    add_checkpoint_args(g, trust_pickle=False)
    add_device_arg(g)
    g.add_argument("--dtype", default="fp32", choices=DTYPES, help="compute dtype (default fp32)")
    g.add_argument("--backend", default="auto",
                   help="auto (the fastest available), eager, compile, triton, onnxruntime, tensorrt, openvino, "
                        "official")
    g.add_argument("--backend-option", action="append", metavar="KEY=VALUE",
                   help="an option for the backend, e.g. onnx_dir=onnx/ (onnxruntime, openvino), "
                        "precision=bf16 (openvino) or engine_dir=engines/ (tensorrt); repeat for several")
    g.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="images per forward pass: the Runtime's chunk size (default 8)")
    add_trust_pickle_arg(g)
    return g


def add_noise_args(p: argparse.ArgumentParser, default: str = "const") -> None:
    p.add_argument("--noise", default=default, choices=NOISE_MODES,
                   help=f"per-layer noise: const (fixed maps, deterministic), random, none (default {default})")
    p.add_argument("--seed", type=int, default=None, help="seed for --noise random")


def add_out_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str, *, required: bool = True,
                default: str | None = None, metavar: str | None = None) -> None:
    """-o/--out: where a command writes (an output folder or file; `help_text` says which)."""
    p.add_argument("-o", "--out", required=required, default=default, metavar=metavar, help=help_text)


def add_images_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files or directories")


def add_generate_args(p: argparse.ArgumentParser) -> None:
    """generate (local and client): seeds, truncation, output folder, noise."""
    p.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-15 or 1,5,9 (default 0-7)")
    p.add_argument("--psi", type=float, default=None, help="truncation psi (default: the model's, 0.7 for presets)")
    p.add_argument("--cutoff", type=int, default=None,
                   help="truncation cutoff in style inputs (default: the model's, 8 for presets)")
    add_out_arg(p, "output directory")
    add_noise_args(p, default="random")


def add_mix_args(p: argparse.ArgumentParser) -> None:
    """mix (local and client): the two sources, the cutoff, output folder, noise."""
    p.add_argument("--a", nargs="+", required=True, help=f"sources of the coarse styles: {SOURCES_HELP}")
    p.add_argument("--b", nargs="+", required=True, help=f"sources of the fine styles: {SOURCES_HELP}")
    p.add_argument("--cutoff", type=int, default=4, help="style inputs < cutoff come from A (default 4)")
    p.add_argument("--psi", type=float, default=None, help="truncation psi for seeds: sources")
    add_out_arg(p, "output directory")
    add_noise_args(p)


def add_interpolate_args(p: argparse.ArgumentParser) -> None:
    """interpolate (local and client): the two ends, the frames, output folder, noise."""
    p.add_argument("--a", nargs="+", required=True, help=f"the start: {SOURCES_HELP}")
    p.add_argument("--b", nargs="+", required=True, help=f"the end (as many as --a, or either one): {SOURCES_HELP}")
    p.add_argument("--steps", type=positive_int, default=8, help="frames, both ends included (default 8)")
    p.add_argument("--psi", type=float, default=None, help="truncation psi for seeds: sources")
    add_out_arg(p, "output directory")
    add_noise_args(p)


def add_edit_args(p: argparse.ArgumentParser, direction_help: str, directions_dir: bool = False) -> None:
    """edit (local and client): inputs, directions (and a folder of them), mode, layers, output folder, noise."""
    p.add_argument("inputs", nargs="+", help=SOURCES_HELP)
    p.add_argument("--direction", action="append", required=True, metavar="NAME=STRENGTH", help=direction_help)
    if directions_dir:
        p.add_argument("--directions-dir", metavar="DIR", help="folder of direction .npy files (official FFHQ "
                                                               "direction_<k>.npy also answer to smile, ...)")
    p.add_argument("--mode", choices=["add", "set"], default="add",
                   help="add: w + s*d; set: the coordinate of w - dlatent_avg along d becomes s (default add)")
    p.add_argument("--layers", help="style inputs to edit, e.g. 0-7 (default: all)")
    p.add_argument("--psi", type=float, default=None, help="truncation psi for seeds: sources")
    add_out_arg(p, "output directory")
    add_noise_args(p)
