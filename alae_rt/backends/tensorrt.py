"""The `tensorrt` backend: encode and decode through the engines written by `alae-rt export tensorrt`.

Use: `Runtime.load(CKPT, device="cuda", backend="tensorrt", backend_options={"engine_dir": DIR})`. DIR holds
`encoder.plan`, `generator.plan` and `engines.json` (TensorRT version, GPU, batch profile, config and the
weights' signature); engines built by another TensorRT version, for another architecture or from other weights
are refused. Batches larger than the engines' profile run in chunks; smaller than its minimum are padded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alae_rt.errors import CheckpointError, InputError
from alae_rt.exported import (
    ENGINE_FILES,
    ENGINE_METADATA,
    META_WEIGHTS,
    batch_noise,
    check_config,
    check_weights,
    io_shapes,
)
from alae_rt.network import StyleALAE


def import_tensorrt():
    """The tensorrt module, or an InputError saying what is needed (no traceback through the CLI)."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or a missing CUDA / libnvinfer library raised from inside the module
        reason = "not installed" if isinstance(exc, ImportError) else str(exc).splitlines()[0][:160]
        raise InputError(f"TensorRT is needed for this ({reason}): on a machine with an NVIDIA GPU, "
                         "pip install 'alae-rt[gpu]' (or `pip install tensorrt`)") from None
    return tensorrt


def require_cuda(what: str) -> torch.device:
    if not torch.cuda.is_available():
        raise InputError(f"{what} needs an NVIDIA GPU with CUDA, and torch sees none here "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
    return torch.device("cuda", torch.cuda.current_device())


_TORCH_OF_TRT = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32}


class TensorRTEngine:
    """One deserialized engine with an execution context, run on torch CUDA tensors on the current stream."""

    def __init__(self, path: Path, device: torch.device):
        trt = import_tensorrt()
        if not path.is_file():
            raise CheckpointError(f"{path}: no such engine file; build it with `alae-rt export tensorrt`")
        self.path, self.device = path, device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise CheckpointError(f"{path}: TensorRT {trt.__version__} cannot deserialize it (built by another "
                                      "version or for another GPU?); build it again")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: _TORCH_OF_TRT[self.engine.get_tensor_dtype(n).name] for n in names}
        # Batch range of optimisation profile 0, from the first input: (min, opt, max).
        shapes = self.engine.get_tensor_profile_shape(self.input_names[0], 0)
        self.batch_range = tuple(int(s[0]) for s in shapes)

    def run(self, inputs: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
        """inputs: name -> CUDA tensor with the batch first (cast to the engine's dtypes) -> outputs in `dtype`."""
        n = next(iter(inputs.values())).shape[0]
        lo, _, hi = self.batch_range
        if not lo <= n <= hi:
            raise InputError(f"{self.path.name}: batch {n} is outside the engine's profile [{lo}, {hi}]")
        held = {}
        for name in self.input_names:
            t = inputs[name].to(self.device, self.dtypes[name]).contiguous()
            held[name] = t
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise InputError(f"{self.path.name}: input {name!r} of shape {list(t.shape)} does not fit the engine")
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs[name] = out
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path.name}: TensorRT execution failed (see the TensorRT log above)")
        return {name: out.to(dtype) for name, out in outs.items()}


def read_engine_metadata(folder: Path) -> dict[str, Any]:
    path = folder / ENGINE_METADATA
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; build the engines with `alae-rt export tensorrt`") from None
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: not valid JSON") from None


class TensorRTBackend:
    """encode / decode through TensorRT engines (see the module docstring)."""

    name = "tensorrt"

    def __init__(self, model: StyleALAE, device: torch.device, engine_dir: str | Path | None = None,
                 check_weights_match: bool = True):
        if engine_dir is None:
            raise InputError("backend 'tensorrt' needs --backend-option engine_dir=DIR "
                             "(backend_options={'engine_dir': DIR} in Python), the folder written by "
                             "`alae-rt export tensorrt`")
        trt = import_tensorrt()
        if device.type != "cuda":
            raise InputError(f"backend 'tensorrt' runs on a CUDA device, not {device}; use device='cuda'")
        folder = Path(engine_dir)
        meta = read_engine_metadata(folder)
        where = str(folder / ENGINE_METADATA)
        if meta.get("tensorrt_version") != trt.__version__:
            raise CheckpointError(f"{where}: engines built with TensorRT {meta.get('tensorrt_version')}, this is "
                                  f"{trt.__version__}; build them again")
        self.model, self.device, self.config = model, device, model.config
        self.engines = {}
        for role, module in (("encoder", model.encoder), ("generator", model.generator)):
            info = meta.get("engines", {}).get(role)
            if info is None:
                raise CheckpointError(f"{where}: lists no {role} engine")
            check_config(info["onnx_metadata"], self.config, f"{where} ({role})")
            if check_weights_match:
                check_weights(json.loads(info["onnx_metadata"].get(META_WEIGHTS, "{}")), module, f"{where} ({role})")
            engine = TensorRTEngine(folder / ENGINE_FILES[role], device)
            expected = list(io_shapes(self.config, role)[0])
            if engine.input_names != expected:
                raise CheckpointError(f"{engine.path}: inputs {engine.input_names}, expected {expected}")
            self.engines[role] = engine

    def _chunked(self, engine: TensorRTEngine, inputs: dict[str, Tensor], out: str, dtype: torch.dtype) -> Tensor:
        """Run in slices of at most the profile's max batch; a batch below its min is padded by repeating a row."""
        lo, _, hi = engine.batch_range
        n = next(iter(inputs.values())).shape[0]
        parts = []
        for start in range(0, n, hi):
            part = {k: v[start:start + hi] for k, v in inputs.items()}
            m = next(iter(part.values())).shape[0]
            if m < lo:
                part = {k: torch.cat([v, v[-1:].expand(lo - m, *v.shape[1:])]) for k, v in part.items()}
            parts.append(engine.run(part, dtype)[out][:m])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def encode(self, x: Tensor) -> Tensor:
        return self._chunked(self.engines["encoder"], {"images": x}, "w", x.dtype)

    def decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        engine = self.engines["generator"]
        maps = batch_noise(noise, styles.shape[0], self.config, engine.dtypes["styles"], styles.device)
        feed = {"styles": styles, **dict(zip(engine.input_names[1:], maps))}
        return self._chunked(engine, feed, "images", styles.dtype)
