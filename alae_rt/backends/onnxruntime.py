"""The `onnxruntime` backend: encode and decode through the files written by `alae-rt export onnx`.

Use: `Runtime.load(CKPT, backend="onnxruntime", backend_options={"onnx_dir": DIR})`, where DIR holds the
`encoder.onnx` and `generator.onnx` exported from the same checkpoint, or is a Triton model repository written
by `alae-rt export triton-repo` (the same files as `alae_encoder/1/model.onnx`, ...). Their metadata records
the config and a signature of the weights; files from other weights or another architecture are refused. The
Runtime keeps the checkpoint for everything else (mapping, truncation, edits); the hot calls run in onnxruntime.

Execution providers: CPU on a CPU Runtime; on a CUDA Runtime the CUDA provider (onnxruntime-gpu), with TF32
off so fp32 results stay within 1e-4 of eager. `providers=[...]` overrides the choice, e.g.
`["TensorrtExecutionProvider", "CUDAExecutionProvider"]` (engines cached in DIR/ort_trt_cache).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from alae_rt.errors import CheckpointError, InputError
from alae_rt.exported import (
    FORMAT,
    META_DTYPE,
    NUMPY_DTYPES,
    TORCH_DTYPES,
    batch_noise,
    check_graph,
    find_onnx,
)
from alae_rt.network import StyleALAE


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise InputError("backend 'onnxruntime' needs the onnxruntime package: pip install 'alae-rt[export]' "
                         "(onnxruntime-gpu on a CUDA machine)") from None
    return onnxruntime


def default_providers(device: torch.device, available: list[str]) -> list[Any]:
    """CPU provider on the CPU; CUDA provider (TF32 off, for fp32 parity) and CPU fallback on a CUDA device."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise InputError(f"backend 'onnxruntime' on {device}: this onnxruntime has no CUDA execution provider "
                         f"(it has {', '.join(available)}); install onnxruntime-gpu instead of onnxruntime")
    index = device.index if device.index is not None else torch.cuda.current_device()
    return [("CUDAExecutionProvider", {"device_id": index, "use_tf32": 0}), "CPUExecutionProvider"]


def cache_root() -> Path:
    """alae-rt's cache: $ALAE_RT_CACHE, else the user's (~/.cache/alae-rt). ONNX-file backends keep the files they
    export on the fly in its onnx/ folder; `auto` keeps its measurements there."""
    if os.environ.get("ALAE_RT_CACHE"):
        return Path(os.environ["ALAE_RT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alae-rt"


def weights_hash(model: StyleALAE) -> str:
    """SHA-256 of the exported networks' tensors (name, shape, fp32 bytes) and the file format: the cache's key."""
    digest = hashlib.sha256(f"{FORMAT} {json.dumps(model.config.to_dict(), sort_keys=True)}".encode())
    for role in ("encoder", "generator", "mapping"):
        for name, tensor in getattr(model, role).state_dict().items():
            t = tensor.detach().to("cpu", torch.float32).contiguous()
            digest.update(f"{role}.{name}{list(t.shape)}".encode())
            digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def onnx_folder(backend: str, model: StyleALAE, onnx_dir: str | Path | None, cache_dir: str | Path | None = None,
                export: bool = True, progress=None) -> Path:
    """The export folder an ONNX-file backend reads: `onnx_dir` when given (it must exist); otherwise, with
    `export`, the model's own export in the cache (`cache_dir`, default `cache_root()/onnx`), in a folder named by
    `weights_hash` and written by `alae-rt export onnx`'s exporter on first use (verified against eager as always).

    The exporter lives in the outer `alae_rt.export` package; it is imported here, only when a folder has to be
    written, as the CLI imports a subcommand's package only when it runs.
    """
    if onnx_dir is not None:
        folder = Path(onnx_dir)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: no such export folder; write it with `alae-rt export onnx`")
        return folder
    if not export:
        raise InputError(f"backend {backend!r} needs --backend-option onnx_dir=DIR "
                         "(backend_options={'onnx_dir': DIR} in Python), the folder written by "
                         "`alae-rt export onnx`")
    folder = Path(cache_dir or cache_root() / "onnx") / f"{model.config.name}-{weights_hash(model)[:24]}"
    if all(find_onnx(folder, role).is_file() for role in ("encoder", "generator")):
        return folder
    try:
        from alae_rt.export.onnx_export import export_onnx
    except ImportError as exc:
        raise InputError(f"backend {backend!r} without onnx_dir exports the model first, which needs the export "
                         f"tools: pip install 'alae-rt[export]' ({exc})") from None
    export_onnx(model, folder, source=f"exported on the fly by the {backend} backend", progress=progress)
    return folder


class OnnxSession:
    """One exported graph in an onnxruntime session, fed and read as torch tensors on the Runtime's device.

    CPU tensors go in and out as numpy views; with a CUDA provider the tensors are bound in place (IO binding),
    so nothing crosses to the host.
    """

    def __init__(self, path: Path, device: torch.device, providers: list[Any] | None = None,
                 threads: int | None = None):
        ort = _import_onnxruntime()
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file; write the export folder with `alae-rt export onnx`")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: the CPU provider warns about fp16 constant folding
        if threads is not None and not 0 <= threads <= 4096:
            raise InputError(f"backend 'onnxruntime' option threads: {threads} is out of range 0..4096 (0: "
                             "onnxruntime's default)")
        if threads:
            options.intra_op_num_threads = int(threads)
        available = ort.get_available_providers()
        if isinstance(providers, str):  # from the CLI: --backend-option providers=CUDAExecutionProvider,CPU...
            providers = [p.strip() for p in providers.split(",") if p.strip()]
        named = [p if isinstance(p, str) else p[0] for p in providers or ()]  # a name, or (name, options)
        missing = [p for p in named if p not in available]
        if missing:
            raise InputError(f"backend 'onnxruntime' option providers: {', '.join(map(str, missing))} not available "
                             f"in this onnxruntime; it has {', '.join(available)}")
        providers = list(providers) if providers else default_providers(device, available)
        # TensorRT provider engines take minutes to build: cache them beside the files.
        trt_options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(path.parent / "ort_trt_cache")}
        providers = [(p, trt_options) if p == "TensorrtExecutionProvider" else p for p in providers]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable or invalid models
            raise CheckpointError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None
        self.path, self.device = path, device
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.dtype_name = self.meta.get(META_DTYPE, "fp32")
        if self.dtype_name not in NUMPY_DTYPES:
            raise CheckpointError(f"{path}: unsupported dtype {self.dtype_name!r} in its metadata")
        self.np_dtype = np.dtype(NUMPY_DTYPES[self.dtype_name])
        self.torch_dtype = TORCH_DTYPES[self.dtype_name]
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.bind_in_place = device.type == "cuda" and "CUDAExecutionProvider" in self.session.get_providers()

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, inputs: dict[str, Tensor], output_shapes: dict[str, tuple[int, ...]], dtype: torch.dtype
            ) -> dict[str, Tensor]:
        """Run on torch tensors (any float dtype; cast to the file's) -> outputs on the device in `dtype`."""
        if self.bind_in_place:
            return self._run_bound(inputs, output_shapes, dtype)
        feed = {name: t.detach().to("cpu", self.torch_dtype).contiguous().numpy() for name, t in inputs.items()}
        outs = self.session.run(list(output_shapes), feed)
        return {name: torch.from_numpy(out).to(self.device, dtype) for name, out in zip(output_shapes, outs)}

    def _run_bound(self, inputs: dict[str, Tensor], output_shapes: dict[str, tuple[int, ...]], dtype: torch.dtype
                   ) -> dict[str, Tensor]:
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        binding = self.session.io_binding()
        held = []  # keep the cast copies alive until the run has read them
        for name, t in inputs.items():
            t = t.detach().to(self.device, self.torch_dtype).contiguous()
            held.append(t)
            binding.bind_input(name, "cuda", index, self.np_dtype.type, list(t.shape), t.data_ptr())
        outs = {}
        for name, shape in output_shapes.items():
            out = torch.empty(shape, dtype=self.torch_dtype, device=self.device)
            binding.bind_output(name, "cuda", index, self.np_dtype.type, list(shape), out.data_ptr())
            outs[name] = out
        # onnxruntime runs on its own stream: the inputs written on torch's stream must be complete first.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return {name: out.to(dtype) for name, out in outs.items()}


class OnnxRuntimeBackend:
    """encode / decode through exported `encoder.onnx` and `generator.onnx` (see the module docstring)."""

    name = "onnxruntime"

    def __init__(self, model: StyleALAE, device: torch.device, onnx_dir: str | Path | None = None,
                 providers: str | list[Any] | None = None, threads: int | None = None,
                 check_weights_match: bool = True):
        folder = onnx_folder(self.name, model, onnx_dir, export=False)
        self.model, self.device, self.config = model, device, model.config
        self.encoder = self._open(folder, "encoder", model.encoder, providers, threads, check_weights_match)
        self.generator = self._open(folder, "generator", model.generator, providers, threads, check_weights_match)
        self.onnx_dir = folder

    def _open(self, folder: Path, role: str, module, providers, threads, check_weights_match: bool) -> OnnxSession:
        session = OnnxSession(find_onnx(folder, role), self.device, providers, threads)
        check_graph(session.meta, session.input_names, self.config, role, module, str(session.path),
                    check_weights_match)
        return session

    @property
    def providers(self) -> list[str]:
        return self.generator.providers

    def encode(self, x: Tensor) -> Tensor:
        n, d = x.shape[0], self.config.latent_size
        return self.encoder.run({"images": x}, {"w": (n, d)}, x.dtype)["w"]

    def decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        cfg = self.config
        n = styles.shape[0]
        maps = batch_noise(noise, n, cfg, self.generator.torch_dtype, styles.device)
        feed = {"styles": styles, **dict(zip(self.generator.input_names[1:], maps))}
        shape = (n, cfg.channels, cfg.resolution, cfg.resolution)
        return self.generator.run(feed, {"images": shape}, styles.dtype)["images"]
