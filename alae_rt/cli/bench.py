"""`alae-rt bench`: time encode/decode/reconstruct/map per backend, dtype and batch against the official way."""

from __future__ import annotations

import argparse

from alae_rt.cli.options import (
    add_checkpoint_args,
    add_command,
    add_device_arg,
    add_threads_arg,
    backend_options,
    parse_int_list,
    progress_bar,
    say,
    set_threads,
)
from alae_rt.errors import InputError

BENCH_OPS = ("encode", "decode", "reconstruct", "map")  # alae_rt.bench.OPS, named here without importing torch


def add_parsers(sub) -> None:
    p = add_command(sub, "bench", "time encode/decode/reconstruct/map per backend, dtype and batch against the "
                    "official way", cmd_bench, model=False)
    p.add_argument("--preset", help="model preset with random weights (default ffhq-1024)")
    add_checkpoint_args(p, checkpoint_help="time a checkpoint instead of a preset",
                        config_help="preset name or official YAML for the checkpoint", trust_pickle=False)
    p.add_argument("--backends", default="all",
                   help="comma-separated backends, or all available (default); the official-order baseline "
                        "always runs")
    p.add_argument("--dtypes", help="comma-separated: fp32,fp16,bf16 (default fp32,bf16 on CPU, all on GPU)")
    p.add_argument("--batch", action="append", metavar="N[,N...]", help="batch sizes (default 1,4,16)")
    p.add_argument("--ops", help=f"comma-separated from {','.join(BENCH_OPS)}")
    p.add_argument("--backend-option", action="append", metavar="[BACKEND:]KEY=VALUE",
                   help="an option for the backends that take it, e.g. onnx_dir=onnx/ (onnxruntime) or "
                        "compile:mode=max-autotune (one backend); repeat for several")
    add_device_arg(p, "cpu, cuda, cuda:N or auto (default)")
    add_threads_arg(p)
    p.add_argument("--min-reps", type=int, default=5, help="timed repetitions at least (default 5)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls at least (default 1)")
    p.add_argument("-o", "--out", default="benchmarks/results", help="folder for JSON/markdown/PNG")
    p.add_argument("--no-save", action="store_true", help="print the table only")


def cmd_bench(args: argparse.Namespace) -> int:
    from alae_rt.bench import OPS, format_table, run_bench, write_report

    if args.preset and args.checkpoint:
        raise InputError("give either --preset or --checkpoint, not both")
    set_threads(args.threads)
    batches = sorted({b for spec in (args.batch or ["1,4,16"]) for b in parse_int_list(spec, "--batch")})
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    backends = None if args.backends == "all" else split(args.backends)
    backends, variants = with_options(backends, args.backend_option or [])
    report = run_bench(
        config=args.config if args.checkpoint else (args.preset or "ffhq-1024"),
        checkpoint=args.checkpoint,
        backends=backends,
        variants=variants,
        dtypes=split(args.dtypes) if args.dtypes else None,
        batches=batches,
        ops=split(args.ops) if args.ops else OPS,
        device=args.device,
        min_reps=args.min_reps,
        min_time_s=args.min_time,
        progress=lambda total, desc: progress_bar(args, total, desc, unit="case"),  # a case: backend, dtype, ...
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


def with_options(backends: list[str] | None, items: list[str]) -> tuple[list[str] | None, dict[str, tuple[str, dict]]]:
    """--backend-option [BACKEND:]KEY=VALUE -> (the backends measured without options, {backend: (backend,
    options)} for run_bench's variants). KEY=VALUE goes to every backend measured whose constructor names KEY (the
    onnxruntime backend's onnx_dir, ...); BACKEND:KEY=VALUE to that one only."""
    import argparse

    from alae_rt.backends import available_backends

    if not items:
        return backends, {}
    names = list(backends) if backends is not None else available_backends()
    options: dict[str, dict] = {}
    for item in items:
        target, colon, rest = item.partition(":")
        if colon and "=" not in target:
            if target not in names:
                raise InputError(f"--backend-option {item!r}: backend {target!r} is not measured here "
                                 f"(--backends: {', '.join(names)})")
            takers = [target]
        else:
            rest = item
            key = rest.partition("=")[0]
            takers = [b for b in names if key in _named_options(b)]
            if not takers:
                raise InputError(f"--backend-option {item!r}: none of the backends measured ({', '.join(names)}) "
                                 f"takes {key!r}; name one as BACKEND:{rest}")
        parsed = backend_options(argparse.Namespace(backend_option=[rest]))
        for b in takers:
            options.setdefault(b, {}).update(parsed)
    # The official baseline always runs; an empty list would mean "all available" to run_bench.
    remaining = [b for b in names if b not in options] or ["official"]
    return remaining, {b: (b, o) for b, o in options.items()}


def _named_options(backend: str) -> list[str]:
    """The keyword arguments a backend's constructor names (those after model and device)."""
    import inspect

    from alae_rt.backends import backend_factory

    try:
        factory = backend_factory(backend)
    except (ImportError, InputError):  # its packages are missing: it is skipped with a note anyway
        return []
    params = list(inspect.signature(factory).parameters.values())[2:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
