"""`alae-rt export onnx | tensorrt | triton-repo`: the exporters' command line (loaded only when `export` runs)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from alae_rt.cli.options import add_checkpoint_args, add_out_arg, out_dir, parse_int_list, positive_int, say
from alae_rt.export.errors import ExportError

DESCRIPTION = """\
Export a model for deployment:
  onnx         encoder.onnx, generator.onnx, mapping.onnx (dynamic batch axis), verified against eager
  tensorrt     TensorRT engines built from an ONNX export (needs TensorRT and an NVIDIA GPU)
  triton-repo  a model repository for NVIDIA Triton Inference Server (ONNX files or TensorRT engines)

Run the model back with Runtime.load(CKPT, backend="onnxruntime", backend_options={"onnx_dir": DIR})
or backend="tensorrt", backend_options={"engine_dir": DIR}. `alae-rt export FORMAT --help` explains each."""

ONNX_HELP = """\
Writes encoder.onnx (images [N, C, R, R] -> w [N, D]), generator.onnx (styles [N, 2L, D] plus one noise input
per layer, noise_4x4_1, noise_4x4_2, ... in the generator's order, each [N, 1, r, r] -> images [N, C, R, R]),
mapping.onnx (z [N, D] -> w [N, D]), dlatent_avg.npy and export.json into OUT. Every input has a dynamic batch
axis; the config, dtype and a signature of the weights are in each file's metadata; onnx.checker (full check)
passes. After export each file runs in onnxruntime on random inputs against the eager model, and the command
fails, writing nothing, past the tolerance (fp32: 1e-4; fp16: 2e-2)."""

TENSORRT_HELP = """\
Builds encoder.plan, generator.plan and mapping.plan from an `alae-rt export onnx` folder with one optimisation
profile over the batch axis, a timing cache (reused on rebuilds) and engines.json (TensorRT version, GPU,
profile, precision). Each engine is checked against onnxruntime on the same inputs. Needs TensorRT and an
NVIDIA GPU. fp16 engines: export with --dtype fp16 (TensorRT 11 builds precision from the file's types)."""

TRITON_HELP = """\
Writes a model repository for NVIDIA Triton Inference Server: alae_encoder, alae_generator, alae_mapping, each
with 1/model.onnx (or 1/model.plan) and a config.pbtxt (platform, max_batch_size, inputs and outputs matching
the files, dynamic batching, instance group). Start Triton with `tritonserver --model-repository OUT`.
The instance group's kind is this machine's unless --instance-kind says (KIND_CPU where there is no CUDA
device, KIND_GPU where there is one or for --format tensorrt): pass it when Triton runs elsewhere."""


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p.add_argument_group("model"))


def _onnx_args(p: argparse.ArgumentParser) -> None:
    from_ = p.add_argument_group("ONNX export")
    from_.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="weights and I/O dtype (default fp32)")
    from_.add_argument("--opset", type=int, default=18, metavar="N",
                       help="ONNX opset, 18 up to the newest the installed onnx knows (default 18)")


def _batch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TensorRT")
    g.add_argument("--fp16", action="store_true",
                   help="fp16 engines (from an fp16 export; TensorRT 10 also lowers an fp32 export)")
    g.add_argument("--timing-cache", metavar="FILE",
                   help="timing cache to reuse and update (default: OUT/timing.cache; triton-repo: none)")


def add_parser(subparsers, name: str, help_text: str) -> None:
    """The `export` subcommand and its three formats (the hook `alae_rt.cli.EXTERNAL_COMMANDS` calls)."""
    p = subparsers.add_parser(name, help=help_text, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = p.add_subparsers(dest="export_format", metavar="FORMAT", required=True)

    o = formats.add_parser("onnx", help="ONNX files of the encoder, generator and mapping", description=ONNX_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _checkpoint_args(o)
    add_out_arg(o, "output folder", metavar="DIR")
    _onnx_args(o)
    o.set_defaults(func=cmd_onnx)

    t = formats.add_parser("tensorrt", help="TensorRT engines from an ONNX export (needs TensorRT and a GPU)",
                           description=TENSORRT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--onnx", required=True, metavar="DIR", help="folder written by `alae-rt export onnx`")
    add_out_arg(t, "output folder for the engines", metavar="DIR")
    _batch_args(t)
    t.add_argument("--min-batch", type=positive_int, default=1, metavar="N", help="smallest batch (default 1)")
    t.add_argument("--opt-batch", type=positive_int, default=8, metavar="N", help="batch tuned for (default 8)")
    t.add_argument("--max-batch", type=positive_int, default=32, metavar="N", help="largest batch (default 32)")
    t.add_argument("--workspace-gib", type=float, metavar="GIB", help="builder workspace limit (default: TensorRT's)")
    t.set_defaults(func=cmd_tensorrt)

    r = formats.add_parser("triton-repo", help="a model repository for NVIDIA Triton Inference Server",
                           description=TRITON_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _checkpoint_args(r)
    r.add_argument("--onnx", metavar="DIR", help="package this ONNX export instead of exporting --checkpoint")
    add_out_arg(r, "the model repository folder", metavar="DIR")
    r.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx",
                   help="onnx (Triton's onnxruntime backend) or tensorrt (engines built here) (default onnx)")
    _onnx_args(r)
    _batch_args(r)
    g = r.add_argument_group("Triton")
    g.add_argument("--max-batch-size", type=positive_int, default=8, metavar="N", help="max_batch_size (default 8)")
    g.add_argument("--preferred-batch-sizes", default="4,8", metavar="LIST",
                   help="dynamic batching's preferred sizes, e.g. 4,8 (default 4,8)")
    g.add_argument("--max-queue-delay-us", type=int, default=100, metavar="US",
                   help="longest a request waits for a batch to fill, in microseconds (default 100)")
    g.add_argument("--instances", type=positive_int, default=1, metavar="N", help="instances per model (default 1)")
    g.add_argument("--instance-kind", choices=["auto", "gpu", "cpu"], default="auto",
                   help="KIND_GPU or KIND_CPU (default auto: this machine's, gpu where it has a CUDA device, else cpu; "
                        "gpu for --format tensorrt)")
    r.set_defaults(func=cmd_triton_repo)


def _require_onnx_tools() -> None:
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportError(f"export needs {', '.join(missing)}: pip install 'alae-rt[export]'")


def _load_model(args: argparse.Namespace):
    from alae_rt.runtime import Runtime

    rt = Runtime.load(args.checkpoint, config=args.config, device="cpu", trust_pickle=args.trust_pickle)
    say(args, f"weights: {rt.source}")
    return rt


def cmd_onnx(args: argparse.Namespace) -> int:
    _require_onnx_tools()
    from alae_rt.export.onnx_export import check_export_args, export_onnx

    check_export_args(args.dtype, args.opset)
    rt = _load_model(args)
    out = out_dir(args.out)
    report = export_onnx(rt.model, out, dtype=args.dtype, opset=args.opset, source=rt.source,
                         progress=lambda m: say(args, m))
    worst = max(v["max_abs_error"] for v in report.verification.values())
    print(f"wrote {', '.join(p.name for p in report.files.values())}, dlatent_avg.npy and export.json to {out} "
          f"({args.dtype}, opset {args.opset}; onnxruntime vs eager max error {worst:.1e})")
    return 0


def cmd_tensorrt(args: argparse.Namespace) -> int:
    _require_onnx_tools()
    from alae_rt.backends.tensorrt import import_tensorrt, require_cuda
    from alae_rt.export.tensorrt_build import build_engines, check_batches, read_export

    check_batches(args.min_batch, args.opt_batch, args.max_batch)
    import_tensorrt()
    require_cuda("alae-rt export tensorrt")
    read_export(args.onnx)
    out = out_dir(args.out)
    meta = build_engines(args.onnx, out, fp16=args.fp16, min_batch=args.min_batch, opt_batch=args.opt_batch,
                         max_batch=args.max_batch, timing_cache=args.timing_cache, workspace_gib=args.workspace_gib,
                         progress=lambda m: say(args, m))
    print(f"wrote {', '.join(e['file'] for e in meta['engines'].values())} and engines.json to {out} "
          f"(TensorRT {meta['tensorrt_version']}, {meta['gpu']['name']}, {meta['precision']}, batches "
          f"{args.min_batch}..{args.max_batch})")
    return 0


def cmd_triton_repo(args: argparse.Namespace) -> int:
    _require_onnx_tools()
    from alae_rt.export.onnx_export import check_export_args, export_onnx
    from alae_rt.export.tensorrt_build import read_export
    from alae_rt.export.triton_repo import INSTANCE_KINDS, check_repo_args, instance_kind_for, write_triton_repo

    preferred = parse_int_list(args.preferred_batch_sizes, "--preferred-batch-sizes")
    check_repo_args(args.format, args.max_batch_size, preferred, args.max_queue_delay_us, args.instances,
                    args.instance_kind)
    if args.onnx and args.checkpoint:
        raise ExportError("give either --checkpoint (export it) or --onnx (an existing export), not both")
    if args.format == "tensorrt":
        from alae_rt.backends.tensorrt import import_tensorrt, require_cuda

        import_tensorrt()
        require_cuda("alae-rt export triton-repo --format tensorrt")
    if args.onnx:
        read_export(args.onnx)
    else:
        check_export_args(args.dtype, args.opset)
    kind, why = instance_kind_for(args.instance_kind, args.format)
    rt = None if args.onnx else _load_model(args)
    out = out_dir(args.out)
    kw = {"fmt": args.format, "max_batch_size": args.max_batch_size, "preferred_batch_sizes": preferred,
          "max_queue_delay_us": args.max_queue_delay_us, "instances": args.instances,
          "instance_kind": kind, "fp16": args.fp16, "timing_cache": args.timing_cache,
          "progress": lambda m: say(args, m)}
    if args.onnx:
        write_triton_repo(args.onnx, out, **kw)
    else:
        scratch = Path(tempfile.mkdtemp(prefix=".alae-rt-onnx-", dir=out))
        try:
            export_onnx(rt.model, scratch, dtype=args.dtype, opset=args.opset, source=rt.source,
                        progress=lambda m: say(args, m))
            write_triton_repo(scratch, out, **kw)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote a Triton model repository to {out}: alae_encoder, alae_generator, alae_mapping ({args.format}, "
          f"{INSTANCE_KINDS[kind]} instances: {why}); run it with `tritonserver --model-repository {out}`")
    return 0
