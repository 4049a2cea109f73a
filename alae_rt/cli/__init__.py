"""The `alae-rt` command line: the parser, the command registry and main().

One module per command group - model (info, convert), ops (encode, decode, reconstruct, generate, mix, edit),
bench, demo, client, serve - on the option groups of alae_rt.cli.options, the sources of alae_rt.cli.sources and
the grids of alae_rt.cli.grids. Nothing here imports torch at module level: `alae-rt --help` and the client
start without it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence

from alae_rt.cli import bench, demo, directions, evaluate, model, ops
from alae_rt.cli.options import (
    add_quiet_arg,
    backend_options,
    made_dirs_mark,
    parse_direction,
    parse_int_list,
    remove_empty_outputs,
)
from alae_rt.errors import AlaeError

__all__ = ["EXIT_USAGE", "EXTERNAL_COMMANDS", "backend_options", "build_parser", "main", "parse_direction",
           "parse_int_list"]

EXIT_USAGE = 2  # bad input of any kind: a one-line message on stderr, no traceback

# The commands built in: each module's add_parsers(sub) adds its subcommands, in this order, to --help.
LOCAL_COMMANDS = (model, ops, directions, evaluate, bench, demo)

# Subcommands loaded only when they run (the core never imports serve, export or training): name -> (module,
# one-line help). The module has `add_parser(subparsers, name, help)`, which adds the subcommand's arguments and
# sets `func`, on the option groups of alae_rt.cli.options.
EXTERNAL_COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("alae_rt.cli.serve", "serve the model over gRPC, with dynamic batching, health, metrics, auth and TLS"),
    "client": ("alae_rt.cli.client",
               "call an alae-rt server: info, health, encode, decode, reconstruct, generate, edit, mix, interpolate"),
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
    for module in LOCAL_COMMANDS:
        module.add_parsers(sub)
    for name, (module, help_text) in EXTERNAL_COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)  # listed in --help, loaded when it runs
    for child in sub.choices.values():
        add_quiet_arg(child)
    return parser


def idle_threads_sleep() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless set: OpenMP threads waiting at a barrier sleep instead of spinning.

    torch's CPU ops and the C++ that `compile` writes run in OpenMP parallel regions, hundreds per image. With
    the default policy a thread that reaches a region's end spins, holding its core, while the thread it waits
    for is off the CPU - on a machine whose cores other processes also use (the normal case for a server), each
    region then waits for the scheduler's next slice: small-64 decode, 2 threads, 2 busy cores measured 15-790
    ms with `compile` and 1117 ms with `eager`, against 2-9 ms and 6 ms with PASSIVE (and 1.8-6 ms on one
    thread). It has to be in the environment before torch loads OpenMP, so the CLI sets it first thing (torch is
    not imported yet); set OMP_WAIT_POLICY=ACTIVE on a machine of your own for the last microseconds.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _version() -> str:
    from alae_rt import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    idle_threads_sleep()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    args.command_line = argv  # what `serve --processes` starts each process with
    mark = made_dirs_mark()
    code = EXIT_USAGE
    try:
        code = _run(args)
    finally:
        if code != 0:  # a failed run leaves no empty output folders behind
            remove_empty_outputs(mark)
    return code


# The Runtime names its arguments and a server its request fields (the APIs' words); at the command line the
# options that carry them. A request field inside a message ("a.truncation_psi", "noise.seed") is named by its last
# part.
OPTION_OF_FIELD = {"truncation_psi": "--psi", "truncation_cutoff": "--cutoff", "cutoff": "--cutoff",
                   "layers": "--layers", "steps": "--steps", "seed": "--seed"}


def _in_option_terms(exc: AlaeError) -> str:
    """The error's message, led by the option's name where it is led by a Runtime argument's or a request field's
    (a server's refusal then reads as the local command's)."""
    text = str(exc)
    field = getattr(exc, "field", None) or ""
    option = OPTION_OF_FIELD.get(field.rpartition(".")[2])
    if not option:
        return text
    text = getattr(exc, "details", text)  # a RemoteError: its message less the method and status
    return re.sub(rf"^{re.escape(field)}(\[\d+\])?(?!\w)", option, text)


def _run(args: argparse.Namespace) -> int:
    """The command, with every expected failure as one line on stderr and exit status 2."""
    try:
        return args.func(args)
    except AlaeError as exc:
        print(f"alae-rt: error: {_in_option_terms(exc)}", file=sys.stderr)
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
