"""TensorRT engines from an ONNX export: a batch-axis optimisation profile, a timing cache, engine metadata, a check."""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from alae_rt import __version__
from alae_rt.backends.tensorrt import TensorRTEngine, import_tensorrt, require_cuda
from alae_rt.export.errors import ExportError
from alae_rt.exported import (
    ENGINE_FILES,
    ENGINE_METADATA,
    FORMAT,
    META_CONFIG,
    META_DTYPE,
    META_FORMAT,
    ONNX_FILES,
    ROLES,
)

TIMING_CACHE = "timing.cache"
# Engine against onnxruntime (CPU) on the same ONNX file and inputs, as torch.allclose. TF32 is off in fp32
# engines, but TensorRT's kernels still sum in other orders than onnxruntime's.
TOLERANCES = {"fp32": {"atol": 1e-3, "rtol": 1e-3}, "fp16": {"atol": 5e-2, "rtol": 5e-2}}
Progress = Callable[[str], None]


def read_export(onnx_dir: str | Path, roles: tuple[str, ...] = ROLES) -> dict[str, dict[str, Any]]:
    """The ONNX files of an `alae-rt export onnx` folder: role -> path, metadata, inputs and outputs (name -> dims
    with the batch axis as a string) and ONNX element types. Refuses a folder that is not such an export."""
    folder = Path(onnx_dir)
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such ONNX export folder; write one with `alae-rt export onnx`")
    out: dict[str, dict[str, Any]] = {}
    for role in roles:
        path = folder / ONNX_FILES[role]
        if not path.is_file():
            raise ExportError(f"{path}: missing; write the export folder with `alae-rt export onnx`")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf decode errors and OSError
            raise ExportError(f"{path}: not a readable ONNX file ({str(exc).splitlines()[0][:160]})") from None
        meta = {p.key: p.value for p in proto.metadata_props}
        if meta.get(META_FORMAT) != FORMAT:
            raise ExportError(f"{path}: not written by `alae-rt export onnx` (no {META_FORMAT} metadata)")

        def describe(values) -> dict[str, dict[str, Any]]:
            return {v.name: {"dims": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
                             "elem_type": v.type.tensor_type.elem_type} for v in values}

        out[role] = {"path": path, "meta": meta, "inputs": describe(proto.graph.input),
                     "outputs": describe(proto.graph.output)}
        del proto
    configs = {out[r]["meta"].get(META_CONFIG) for r in out}
    if len(configs) != 1:
        raise ExportError(f"{folder}: the ONNX files were exported from different models")
    return out


def check_batches(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ExportError(f"batch profile must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                          f"{min_batch}, {opt_batch}, {max_batch}")


def gpu_description(device: torch.device) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}


def _build_one(trt, builder, logger, path: Path, *, weak_fp16: bool, fp16: bool, batches: tuple[int, int, int],
               cache_bytes: bytes, workspace_gib: float | None) -> tuple[bytes, bytes]:
    """Parse one ONNX file and build its engine -> (serialized engine, updated timing cache)."""
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if not weak_fp16 and strongly_typed is not None:
        # Precision follows the ONNX file's types (TensorRT 11 builds nothing else; 10.x takes the flag).
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{path.name}: TensorRT's ONNX parser refused it: {errors[:400]}")
    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if not fp16 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 convolutions would miss fp32 parity by ~1e-3 relative
    lo, opt, hi = batches
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]  # [batch (-1), ...]: only the batch axis is dynamic
        profile.set_shape(tensor.name, (lo, *rest), (opt, *rest), (hi, *rest))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{path.name}: TensorRT could not build an engine (its log above says why)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def random_feed(inputs: dict[str, dict[str, Any]], n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random fp32 inputs by name for a batch of n: images uniform in [-1, 1], everything else N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    feed = {}
    for name, info in inputs.items():
        shape = [n, *info["dims"][1:]]
        feed[name] = torch.rand(shape, generator=gen) * 2 - 1 if name == "images" else torch.randn(shape, generator=gen)
    return feed


def verify_engine(engine: TensorRTEngine, onnx_path: Path, inputs: dict[str, dict[str, Any]], dtype: str,
                  precision: str, batch: int) -> dict[str, Any]:
    """The engine against onnxruntime (CPU) on the same ONNX file and random inputs."""
    import onnxruntime as ort

    np_dtype = np.float16 if dtype == "fp16" else np.float32
    feed = {k: v.to(torch.float16 if dtype == "fp16" else torch.float32) for k, v in random_feed(inputs, batch).items()}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    expected = session.run(None, {k: v.numpy().astype(np_dtype) for k, v in feed.items()})[0].astype(np.float32)
    with torch.cuda.device(engine.device):
        got = engine.run({k: v.to(engine.device) for k, v in feed.items()}, torch.float32)
        torch.cuda.synchronize(engine.device)
    got_np = next(iter(got.values())).cpu().numpy()
    tol = TOLERANCES[precision]
    err = np.abs(got_np - expected)
    passed = bool(np.isfinite(got_np).all() and (err - tol["atol"] - tol["rtol"] * np.abs(expected)).max() <= 0)
    return {"batch": batch, "reference": "onnxruntime CPU", "max_abs_error": float(err.max()), **tol, "passed": passed}


def build_engines(onnx_dir: str | Path, out_dir: str | Path, *, fp16: bool = False, min_batch: int = 1,
                  opt_batch: int = 8, max_batch: int = 32, timing_cache: str | Path | None = None,
                  workspace_gib: float | None = None, roles: tuple[str, ...] = ROLES,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Build `ROLE.plan` engines from an ONNX export and write `engines.json` beside them -> that metadata.

    One optimisation profile covers batches min_batch..max_batch (tuned for opt_batch). The timing cache
    (default out_dir/timing.cache) is read when present and written back, so rebuilds are fast. fp16: from an
    fp16 export the engine follows the file's types (strongly typed); from an fp32 export TensorRT 10 may pick
    fp16 kernels (weak typing; TensorRT 11 removed it, export with --dtype fp16 instead). Each engine is run
    against onnxruntime on the same file and inputs; past `TOLERANCES` an ExportError is raised.
    """
    check_batches(min_batch, opt_batch, max_batch)
    trt = import_tensorrt()
    device = require_cuda("building TensorRT engines")
    export = read_export(onnx_dir, roles)
    dtype = export[roles[0]]["meta"].get(META_DTYPE, "fp32")
    weak_fp16 = fp16 and dtype == "fp32"
    if weak_fp16 and not hasattr(trt.BuilderFlag, "FP16"):
        raise ExportError(f"TensorRT {trt.__version__} builds fp16 engines only from an fp16 ONNX export: run "
                          "`alae-rt export onnx --dtype fp16` and build from that folder")
    precision = "fp16" if fp16 or dtype == "fp16" else "fp32"
    say = progress or (lambda message: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = Path(timing_cache) if timing_cache else out / TIMING_CACHE
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    batches = (min_batch, opt_batch, max_batch)
    gpu = gpu_description(device)
    engines: dict[str, Any] = {}
    for i, role in enumerate(roles, 1):
        src = export[role]
        say(f"[{i}/{len(roles)}] {role}: building a {precision} engine for batches {min_batch}..{max_batch} "
            f"on {gpu['name']} (minutes at 1024x1024)...")
        start = time.perf_counter()
        with torch.cuda.device(device):
            plan, cache_bytes = _build_one(trt, builder, logger, src["path"], weak_fp16=weak_fp16, fp16=fp16,
                                           batches=batches, cache_bytes=cache_bytes, workspace_gib=workspace_gib)
        path = out / ENGINE_FILES[role]
        path.write_bytes(plan)
        cache_path.write_bytes(cache_bytes)  # after each engine: an interrupted build keeps what it timed
        engine = TensorRTEngine(path, device)
        check = verify_engine(engine, src["path"], src["inputs"], dtype, precision,
                              batch=min(max(min_batch, 2), max_batch))
        say(f"[{i}/{len(roles)}] {role}: built in {time.perf_counter() - start:.0f} s ({len(plan) / 2**20:.1f} MiB); "
            f"vs onnxruntime at batch {check['batch']}: max error {check['max_abs_error']:.2e}")
        if not check["passed"]:
            raise ExportError(f"{role}: the TensorRT engine differs from onnxruntime by up to "
                              f"{check['max_abs_error']:.3e}, past the {precision} tolerance (atol {check['atol']:g}, "
                              f"rtol {check['rtol']:g})")
        engines[role] = {
            "file": path.name,
            "bytes": len(plan),
            "sha256": hashlib.sha256(plan).hexdigest(),
            "onnx_file": src["path"].name,
            "onnx_metadata": src["meta"],
            "inputs": src["inputs"],
            "outputs": src["outputs"],
            "verification": check,
        }
    metadata = {
        "format": FORMAT,
        "tensorrt_version": trt.__version__,
        "gpu": gpu,
        "precision": precision,
        "strongly_typed": not weak_fp16,
        "tf32": fp16,  # cleared only for full fp32 engines
        "batch_profile": {"min": min_batch, "opt": opt_batch, "max": max_batch},
        "timing_cache": str(cache_path),
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "alae_rt_version": __version__,
        "engines": engines,
    }
    (out / ENGINE_METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata
