"""ONNX export of the encoder, generator and mapping: traced, annotated, checked, then verified against eager."""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from alae_rt import __version__
from alae_rt.config import ModelConfig
from alae_rt.export.errors import ExportError
from alae_rt.exported import (
    BATCH_AXIS,
    FORMAT,
    META_CONFIG,
    META_DTYPE,
    META_FORMAT,
    META_ROLE,
    META_SOURCE,
    META_VERSION,
    META_WEIGHTS,
    NUMPY_DTYPES,
    ONNX_FILES,
    ROLES,
    TORCH_DTYPES,
    io_shapes,
    weights_signature,
)
from alae_rt.methods import method_of
from alae_rt.network import StyleALAE

SUPPORTED_DTYPES = tuple(NUMPY_DTYPES)
MIN_OPSET = 18  # torch's exporter writes nothing older: it silently turns a lower request into 18
DEFAULT_OPSET = 18  # read by TensorRT 10+, Triton's onnxruntime backend and onnxruntime 1.14+
EXPORT_BATCH = 2  # batch of the example inputs that are traced; the batch axis of every input stays dynamic
MAX_BATCH = 4096  # upper bound of the traced batch axis (the graphs hold nothing that depends on it)
VERIFY_BATCH = 1  # batch of the check after export: another size than the traced one, cheap at 1024x1024
MANIFEST = "export.json"
DLATENT_AVG = "dlatent_avg.npy"
# The check after export, onnxruntime (CPU) against eager fp32 on the same inputs, as torch.allclose:
# |onnx - eager| <= atol + rtol * |eager|. fp16 files get fp16-rounded inputs; eager sees the same rounded values.
TOLERANCES = {"fp32": {"atol": 1e-4, "rtol": 1e-4}, "fp16": {"atol": 2e-2, "rtol": 2e-2}}
Progress = Callable[[str], None]

_DOCS = {
    "encoder": "StyleALAE encoder E: images [N, C, R, R] in [-1, 1] -> w [N, D].",
    "generator": "StyleALAE generator G: styles [N, 2L, D] and 2L noise maps [N, 1, r, r] (block 0 noise 1, block 0 "
                 "noise 2, block 1 noise 1, ...) -> images [N, C, R, R] in about [-1, 1]. Every noise input carries "
                 "the batch axis; to share one map over the batch (block 0's first map is shared in the official "
                 "code) repeat it N times. Zeros mean no noise.",
    "mapping": "StyleALAE mapping F: z [N, D] -> w [N, D] (pixel norm, then the mapping layers). Truncation is "
               "not part of it: styles = dlatent_avg + psi * (w - dlatent_avg) on style inputs < cutoff.",
}


class _GeneratorGraph(nn.Module):
    """G with one explicit input per noise map: (styles [N, 2L, D], noise_4x4_1 [N, 1, 4, 4], ...) -> images."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, styles: Tensor, *noise: Tensor) -> Tensor:
        return self.generator(styles, list(noise))


@dataclass
class ExportReport:
    """What `export_onnx` wrote: the folder, one file per role, and the verification of each."""

    out_dir: Path
    files: dict[str, Path]
    verification: dict[str, dict[str, Any]]
    manifest: dict[str, Any] = field(default_factory=dict)


def max_opset() -> int:
    """The newest opset this installation can write (the onnx package's)."""
    return onnx.defs.onnx_opset_version()


def check_export_args(dtype: str, opset: int) -> None:
    """Refuse an unsupported dtype or opset before any work is done."""
    if dtype not in SUPPORTED_DTYPES:
        raise ExportError(f"dtype {dtype!r} is not supported for export; use {' or '.join(SUPPORTED_DTYPES)}")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset():
        raise ExportError(f"opset {opset} is not supported; use an opset from {MIN_OPSET} to {max_opset()} "
                          f"(default {DEFAULT_OPSET})")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's chatter (progress lines, optional-dependency notes, warnings); errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def example_inputs(cfg: ModelConfig, role: str, n: int, gen: torch.Generator, model: StyleALAE) -> dict[str, Tensor]:
    """Random fp32 inputs for one graph, by input name: images in [-1, 1], styles = F(z) with an independent z per
    style input (realistic scale, every layer different), unit Gaussian noise, z ~ N(0, 1)."""
    inputs, _ = io_shapes(cfg, role)
    out = {}
    for name, shape in inputs.items():
        shape = [n, *shape[1:]]
        if name == "images":
            out[name] = torch.rand(shape, generator=gen) * 2 - 1
        elif name == "styles":
            z = torch.randn(n * cfg.num_styles, cfg.latent_size, generator=gen)
            with torch.inference_mode():
                out[name] = model.mapping(z).reshape(shape)  # [N, 2L, D]
        else:
            out[name] = torch.randn(shape, generator=gen)
    return out


def run_eager(model: StyleALAE, role: str, inputs: dict[str, Tensor]) -> Tensor:
    """The eager reference of one graph on named inputs."""
    with torch.inference_mode():
        if role == "encoder":
            return model.encoder(inputs["images"])
        if role == "mapping":
            return model.mapping(inputs["z"])
        noise = [t for name, t in inputs.items() if name != "styles"]
        return model.generator(inputs["styles"], noise)


def _module(model: StyleALAE, role: str) -> nn.Module:
    return {"encoder": model.encoder, "generator": _GeneratorGraph(model.generator), "mapping": model.mapping}[role]


def _trace(model: StyleALAE, traced: StyleALAE, role: str, dtype: str, opset: int):
    """torch.onnx.export (the dynamo exporter) of `traced` (the model in the export dtype) with a dynamic batch
    axis -> onnx.ModelProto. Example inputs come from `model` (fp32)."""
    cfg = model.config
    inputs, outputs = io_shapes(cfg, role)
    args = tuple(t.to(TORCH_DTYPES[dtype])
                 for t in example_inputs(cfg, role, EXPORT_BATCH, torch.Generator().manual_seed(0), model).values())
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=MAX_BATCH)
    dynamic: Any = ({0: batch}, tuple({0: batch} for _ in args[1:])) if role == "generator" else ({0: batch},)
    try:
        with _quiet():
            program = torch.onnx.export(_module(traced, role), args, dynamo=True, input_names=list(inputs),
                                        output_names=list(outputs), dynamic_shapes=dynamic, opset_version=opset,
                                        external_data=False, verbose=False, optimize=True)
    except Exception as exc:  # the exporter raises many types; the first line says what failed
        raise ExportError(f"{role}: torch.onnx.export failed: {str(exc).strip().splitlines()[0][:300]}") from None
    return program.model_proto


def _annotate(proto, role: str, model: StyleALAE, dtype: str, source: str) -> None:
    """Config, dtype, weights signature and provenance into metadata_props; docs on the model and its inputs."""
    meta = {
        META_FORMAT: FORMAT,
        META_ROLE: role,
        META_CONFIG: model.config.to_json(),
        META_DTYPE: dtype,
        META_WEIGHTS: json.dumps(weights_signature(getattr(model, role))),
        META_SOURCE: source,
        META_VERSION: __version__,
        "alae_rt.exporter": f"torch {torch.__version__} (dynamo)",
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "alae-rt", __version__
    proto.doc_string = _DOCS[role]
    proto.graph.name = f"alae_{role}"


def _check_file(path: Path, role: str, cfg: ModelConfig, opset: int) -> None:
    """Shape inference written into the file, the full onnx.checker check, and the interface as promised."""
    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True, strict_mode=True)
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path.name}: onnx.checker refused it: {str(exc).strip().splitlines()[0][:300]}") from None
    proto = onnx.load(str(path), load_external_data=False)
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if version != opset:
        raise ExportError(f"{path.name}: written with opset {version}, {opset} was asked for")

    def dims(value_info) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    want_in, want_out = io_shapes(cfg, role)
    got_in = {v.name: dims(v) for v in proto.graph.input}
    got_out = {v.name: dims(v) for v in proto.graph.output}
    if got_in != want_in or got_out != want_out:
        raise ExportError(f"{path.name}: interface {got_in} -> {got_out}, expected {want_in} -> {want_out}")


def verify_onnx(path: Path, model: StyleALAE, role: str, dtype: str, batch: int = VERIFY_BATCH, seed: int = 1,
                providers: list[str] | None = None) -> dict[str, Any]:
    """Run the file in onnxruntime on random inputs and compare with eager fp32 -> errors and whether they pass."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(seed)
    torch_dtype = TORCH_DTYPES[dtype]
    inputs = {k: v.to(torch_dtype).float() for k, v in example_inputs(model.config, role, batch, gen, model).items()}
    expected = run_eager(model, role, inputs).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        got = session.run(None, {k: v.to(torch_dtype).numpy() for k, v in inputs.items()})[0].astype(np.float32)
    except Exception as exc:  # onnxruntime's own exception types
        raise ExportError(f"{path.name}: onnxruntime cannot run it: {str(exc).strip().splitlines()[0][:300]}") from None
    tol = TOLERANCES[dtype]
    err = np.abs(got - expected)
    excess = err - (tol["atol"] + tol["rtol"] * np.abs(expected))
    return {
        "batch": batch,
        "provider": session.get_providers()[0],
        "max_abs_error": float(err.max()),
        "max_abs_reference": float(np.abs(expected).max()),
        **tol,
        "passed": bool(np.isfinite(got).all() and excess.max() <= 0),
    }


def read_dlatent_avg(onnx_dir: str | Path) -> np.ndarray:
    """dlatent_avg [2L, D] from an export folder."""
    path = Path(onnx_dir) / DLATENT_AVG
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ExportError(f"{path}: missing; write the export folder with `alae-rt export onnx`") from None
    except (ValueError, OSError) as exc:
        raise ExportError(f"{path}: not a readable .npy array ({exc})") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import onnxruntime
    import onnxscript

    return {"alae_rt": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}


def _cpu_fp32(model: StyleALAE) -> StyleALAE:
    p = next(model.parameters())
    if p.device.type == "cpu" and p.dtype == torch.float32:
        return model
    return copy.deepcopy(model).to("cpu", torch.float32)


def export_onnx(model: StyleALAE, out_dir: str | Path, *, dtype: str = "fp32", opset: int = DEFAULT_OPSET,
                source: str = "", verify_batch: int = VERIFY_BATCH, progress: Progress | None = None) -> ExportReport:
    """Write encoder.onnx, generator.onnx, mapping.onnx, dlatent_avg.npy and export.json into out_dir.

    Each graph has a dynamic batch axis, named inputs/outputs (`alae_rt.exported.io_shapes`), the model config,
    dtype and a signature of the weights in its metadata, passes `onnx.checker` (full check, inferred shapes
    written into the file), and is run in onnxruntime on random inputs against the eager model: past
    `TOLERANCES[dtype]` an ExportError is raised and nothing is left in out_dir. Files appear in out_dir only
    once all three passed. `model` may be any device or dtype; the export works from a CPU fp32 copy.
    """
    check_export_args(dtype, opset)
    say = progress or (lambda message: None)
    model = _cpu_fp32(model).eval().requires_grad_(False)
    traced = model if dtype == "fp32" else copy.deepcopy(model).to(TORCH_DTYPES[dtype])
    cfg = model.config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Written into a scratch folder beside the destination, moved into place once everything passed.
    tmp = Path(tempfile.mkdtemp(prefix=".alae-rt-export-", dir=out_dir))
    verification: dict[str, dict[str, Any]] = {}
    files: dict[str, dict[str, Any]] = {}
    try:
        for i, role in enumerate(ROLES, 1):
            say(f"[{i}/{len(ROLES)}] {role}: tracing ({cfg.resolution}x{cfg.resolution}, {dtype}, opset {opset})...")
            start = time.perf_counter()
            proto = _trace(model, traced, role, dtype, opset)
            _annotate(proto, role, model, dtype, source)
            path = tmp / ONNX_FILES[role]
            onnx.save_model(proto, str(path))
            del proto
            _check_file(path, role, cfg, opset)
            check = verify_onnx(path, model, role, dtype, batch=verify_batch)
            verification[role] = check
            say(f"[{i}/{len(ROLES)}] {role}: exported and checked in {time.perf_counter() - start:.1f} s; onnxruntime "
                f"vs eager at batch {check['batch']}: max error {check['max_abs_error']:.2e} "
                f"(tolerance atol {check['atol']:g} + rtol {check['rtol']:g})")
            if not check["passed"]:
                raise ExportError(f"{role}: verification failed: onnxruntime differs from eager by up to "
                                  f"{check['max_abs_error']:.3e} at batch {check['batch']}, past the {dtype} tolerance "
                                  f"(atol {check['atol']:g}, rtol {check['rtol']:g}); nothing was written")
            inputs, outputs = io_shapes(cfg, role)
            files[role] = {"file": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path),
                           "inputs": inputs, "outputs": outputs}
        np.save(tmp / DLATENT_AVG, model.dlatent_avg.numpy())
        manifest = {
            "format": FORMAT,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": source,
            "config": cfg.to_dict(),
            # The training method (alae_rt.methods): IntroVAE's encoder.onnx gives the posterior mean and its
            # mapping.onnx is the identity (G takes z); LIA's mapping.onnx is the flow z -> y.
            "method": method_of(model).to_dict(),
            "dtype": dtype,
            "opset": opset,
            "batch_axis": BATCH_AXIS,
            "traced_batch": EXPORT_BATCH,
            "noise": "one input per layer in the generator's order; each carries the batch axis (repeat a shared map)",
            "dlatent_avg": f"{DLATENT_AVG}: [2L, D] float32, the truncation centre",
            "files": files,
            "verification": verification,
            "versions": _versions(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for name in [*(ONNX_FILES[r] for r in ROLES), DLATENT_AVG, MANIFEST]:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportReport(out_dir, {r: out_dir / ONNX_FILES[r] for r in ROLES}, verification, manifest)
