"""A model repository for NVIDIA Triton Inference Server: alae_encoder, alae_generator, alae_mapping.

Layout (Triton's): `DIR/alae_<role>/config.pbtxt` and `DIR/alae_<role>/1/model.onnx` (or `model.plan`).
Each config states the platform, max_batch_size, every input and output with its name, data type and dims
(without the batch axis, which Triton adds), dynamic batching (preferred sizes, queue delay) and the instance
group, read from the model files themselves. `alae_mapping/dlatent_avg.npy` holds the truncation centre.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from alae_rt.export.errors import ExportError
from alae_rt.export.onnx_export import DLATENT_AVG, read_dlatent_avg
from alae_rt.export.tensorrt_build import read_export
from alae_rt.exported import ENGINE_FILES, META_CONFIG, META_DTYPE, ROLES, TRITON_MODELS

MODEL_NAMES = TRITON_MODELS
PLATFORMS = {"onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
MODEL_FILES = {"onnx": "model.onnx", "tensorrt": "model.plan"}
# ONNX element types -> Triton's DataType names (model_config.proto).
TRITON_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.INT64: "TYPE_INT64",
                onnx.TensorProto.INT32: "TYPE_INT32"}
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
Progress = Callable[[str], None]


def instance_kind_for(kind: str, fmt: str) -> tuple[str, str]:
    """--instance-kind resolved -> (gpu | cpu, why). "auto" takes this machine's: a repository written on a CPU-only
    machine runs there (a KIND_GPU config on a machine without a GPU fails to load in Triton); TensorRT engines are
    GPU-only whatever the machine."""
    if kind != "auto":
        return kind, f"--instance-kind {kind}"
    if fmt == "tensorrt":
        return "gpu", "TensorRT engines"
    import torch

    if torch.cuda.is_available():
        return "gpu", "this machine has a CUDA device; --instance-kind cpu for a CPU server"
    return "cpu", "no CUDA device here; --instance-kind gpu for a GPU server"


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensors(kind: str, tensors: dict[str, dict[str, Any]]) -> str:
    entries = []
    for name, info in tensors.items():
        triton_type = TRITON_TYPES.get(info["elem_type"])
        if triton_type is None:
            raise ExportError(f"tensor {name!r}: ONNX element type {info['elem_type']} has no Triton data type here")
        dims = ", ".join(str(d) for d in info["dims"][1:])  # Triton adds the batch axis itself (max_batch_size > 0)
        entries.append(f"  {{\n    name: {_quote(name)}\n    data_type: {triton_type}\n    dims: [ {dims} ]\n  }}")
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def model_config(name: str, platform: str, inputs: dict[str, dict[str, Any]], outputs: dict[str, dict[str, Any]], *,
                 max_batch_size: int, preferred_batch_sizes: Sequence[int], max_queue_delay_us: int, instances: int,
                 instance_kind: str, parameters: dict[str, str]) -> str:
    """config.pbtxt text (Triton's ModelConfig in protobuf text format) for one model."""
    text = f"name: {_quote(name)}\nplatform: {_quote(platform)}\nmax_batch_size: {max_batch_size}\n"
    text += _tensors("input", inputs) + _tensors("output", outputs)
    preferred = ", ".join(str(b) for b in preferred_batch_sizes)
    text += (f"dynamic_batching {{\n  preferred_batch_size: [ {preferred} ]\n"
             f"  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n")
    text += f"instance_group [\n  {{\n    count: {instances}\n    kind: {INSTANCE_KINDS[instance_kind]}\n  }}\n]\n"
    for key, value in parameters.items():
        text += f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}\n"
    return text


def check_repo_args(fmt: str, max_batch_size: int, preferred_batch_sizes: Sequence[int], max_queue_delay_us: int,
                    instances: int, instance_kind: str) -> None:
    """Refuse settings Triton would refuse, before any work is done."""
    if fmt not in PLATFORMS:
        raise ExportError(f"format {fmt!r} is not supported; use onnx or tensorrt")
    if max_batch_size < 1:
        raise ExportError(f"--max-batch-size must be >= 1, got {max_batch_size}")
    bad = [b for b in preferred_batch_sizes if not 1 <= b <= max_batch_size]
    if bad or not preferred_batch_sizes:
        raise ExportError(f"--preferred-batch-sizes must be between 1 and --max-batch-size {max_batch_size}, "
                          f"got {list(preferred_batch_sizes)}")
    if max_queue_delay_us < 0:
        raise ExportError(f"--max-queue-delay-us must be >= 0, got {max_queue_delay_us}")
    if instances < 1:
        raise ExportError(f"--instances must be >= 1, got {instances}")
    if instance_kind not in ("auto", *INSTANCE_KINDS):
        raise ExportError(f"--instance-kind must be auto, gpu or cpu, got {instance_kind!r}")
    if fmt == "tensorrt" and instance_kind == "cpu":
        raise ExportError("TensorRT engines run on GPU instances only; drop --instance-kind cpu or use --format onnx")


def write_triton_repo(onnx_dir: str | Path, out_dir: str | Path, *, fmt: str = "onnx", max_batch_size: int = 8,
                      preferred_batch_sizes: Sequence[int] = (4, 8), max_queue_delay_us: int = 100,
                      instances: int = 1, instance_kind: str = "auto", fp16: bool = False,
                      timing_cache: str | Path | None = None, progress: Progress | None = None) -> dict[str, Path]:
    """Lay out a Triton model repository in out_dir from an `alae-rt export onnx` folder -> role -> model folder.

    fmt "onnx" copies the ONNX files; "tensorrt" builds engines from them (batch profile 1..max_batch_size,
    tuned for the largest preferred size; needs TensorRT and a GPU; the timing cache is kept only where
    `timing_cache` says, never in the repository, whose top level holds model folders only). The configs are
    written from the files' own inputs and outputs; instance_kind "auto" is this machine's (`instance_kind_for`).
    """
    check_repo_args(fmt, max_batch_size, preferred_batch_sizes, max_queue_delay_us, instances, instance_kind)
    instance_kind, _ = instance_kind_for(instance_kind, fmt)
    export = read_export(onnx_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parameters_common: dict[str, str] = {}
    sources: dict[str, Path] = {role: export[role]["path"] for role in ROLES}
    scratch = None
    try:
        if fmt == "tensorrt":
            from alae_rt.export.tensorrt_build import build_engines

            scratch = Path(tempfile.mkdtemp(prefix=".alae-rt-engines-", dir=out))
            meta = build_engines(onnx_dir, scratch, fp16=fp16, min_batch=1, opt_batch=max(preferred_batch_sizes),
                                 max_batch=max_batch_size, timing_cache=timing_cache, progress=progress)
            sources = {role: scratch / ENGINE_FILES[role] for role in ROLES}
            parameters_common = {"tensorrt_version": meta["tensorrt_version"], "gpu": meta["gpu"]["name"],
                                 "precision": meta["precision"]}
        folders = {}
        for role in ROLES:
            info = export[role]
            folder = out / MODEL_NAMES[role]
            (folder / "1").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sources[role], folder / "1" / MODEL_FILES[fmt])
            parameters = {"alae_rt.role": role, "alae_rt.dtype": info["meta"].get(META_DTYPE, "fp32"),
                          "alae_rt.config": info["meta"][META_CONFIG], **parameters_common}
            text = model_config(MODEL_NAMES[role], PLATFORMS[fmt], info["inputs"], info["outputs"],
                                max_batch_size=max_batch_size, preferred_batch_sizes=preferred_batch_sizes,
                                max_queue_delay_us=max_queue_delay_us, instances=instances,
                                instance_kind=instance_kind, parameters=parameters)
            (folder / "config.pbtxt").write_text(text)
            folders[role] = folder
        np.save(folders["mapping"] / DLATENT_AVG, read_dlatent_avg(onnx_dir))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if progress:
        progress(f"wrote {', '.join(MODEL_NAMES.values())} ({fmt}, max_batch_size {max_batch_size}) to {out}")
    return folders

