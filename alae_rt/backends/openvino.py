"""The `openvino` backend: encode and decode through the exported ONNX files, compiled by OpenVINO for the CPU.

Use: `Runtime.load(CKPT, backend="openvino")` exports the checkpoint on first use into the cache (a folder named by
the weights' hash, `alae_rt.backends.onnxruntime.onnx_folder`, shared with the onnxruntime backend), or
`backend_options={"onnx_dir": DIR}` reads the files of `alae-rt export onnx` (or a Triton repository) as they are;
files from other weights or another architecture are refused, as by onnxruntime. The Runtime keeps the checkpoint
for everything else (mapping, truncation, edits).

Options: `precision` f32 / bf16 / f16 (OpenVINO's inference precision; default: the Runtime's dtype, so a bf16
Runtime runs OpenVINO's bf16 path), `threads` (default torch's thread count, as the other CPU backends), `streams`
(CPU streams: a batch is split over them and its parts run side by side; default 1, the latency setting).
Tolerances against the official fixtures' outputs (tests/test_backend_openvino.py): f32 1e-4, as every backend;
bf16 and f16 are OpenVINO's reduced-precision paths, within `TOLERANCES` below (bf16: as eager bf16's own error).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from alae_rt.backends.onnxruntime import onnx_folder
from alae_rt.errors import CheckpointError, InputError
from alae_rt.exported import META_DTYPE, batch_noise, check_graph, find_onnx
from alae_rt.network import StyleALAE

PRECISIONS = ("f32", "bf16", "f16")
# The Runtime's dtype -> the precision OpenVINO runs in unless told otherwise.
DEFAULT_PRECISION = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
# max |openvino - official| on the official fixtures' images in [-1, 1] and on w relative to max |w|, per precision:
# twice the worst seen (bf16 3.3e-2 / 4.9e-3, eager bf16's own 3.9e-2 / 9.2e-3; f16 6.4e-3 / 6.1e-4); f32 as everywhere.
TOLERANCES = {"f32": 1e-4, "bf16": 8e-2, "f16": 1.5e-2}


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise InputError("backend 'openvino' needs the openvino package: pip install 'alae-rt[openvino]'") from None
    return openvino


class OpenVinoModel:
    """One exported graph compiled by OpenVINO's CPU plugin, fed and read as torch tensors."""

    def __init__(self, ov, core, path: Path, precision: str, threads: int, streams: int):
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file; write the export folder with `alae-rt export onnx`")
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for unreadable files
            raise CheckpointError(f"{path}: OpenVINO cannot read it ({str(exc).splitlines()[0][:200]})") from None
        # the ONNX file's metadata_props, as OpenVINO keeps them
        info = model.get_rt_info()
        keys = list(info["framework"].keys()) if "framework" in list(info.keys()) else []
        self.meta = {k: model.get_rt_info(["framework", k]).astype(str) for k in keys}
        if self.meta.get(META_DTYPE, "fp32") != "fp32":
            raise CheckpointError(f"{path}: an {self.meta[META_DTYPE]} export; OpenVINO takes the fp32 files and "
                                  "lowers the precision itself (--backend-option precision=bf16)")
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": streams}
        self.compiled = core.compile_model(model, "CPU", config)
        used = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if used != precision:
            caps = ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            raise InputError(f"backend 'openvino' option precision: this CPU runs {used}, not {precision} "
                             f"(OpenVINO's CPU capabilities here: {caps})")
        self.path = path
        self.input_names = [i.get_any_name() for i in model.inputs]
        self.streams = streams
        self._queue = ov.AsyncInferQueue(self.compiled, streams)
        self._results: dict[int, np.ndarray] = {}
        self._queue.set_callback(self._done)

    def _done(self, request, index: int) -> None:
        self._results[index] = request.get_output_tensor(0).data.copy()

    def run(self, inputs: dict[str, Tensor], dtype: torch.dtype) -> Tensor:
        """Inputs as torch tensors (any float dtype) -> the graph's one output, in `dtype`. With several streams
        the batch is split into as many parts, run at once."""
        feed = {name: t.detach().to("cpu", torch.float32).contiguous().numpy() for name, t in inputs.items()}
        n = next(iter(feed.values())).shape[0]
        parts = min(self.streams, n)
        bounds = np.linspace(0, n, parts + 1).astype(int)
        self._results.clear()
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            self._queue.start_async({k: v[a:b] for k, v in feed.items()}, i)
        self._queue.wait_all()
        out = np.concatenate([self._results[i] for i in range(parts)]) if parts > 1 else self._results[0]
        return torch.from_numpy(out).to(dtype)


class OpenVinoBackend:
    """encode / decode through exported `encoder.onnx` and `generator.onnx` in OpenVINO (see the module docstring)."""

    name = "openvino"

    def __init__(self, model: StyleALAE, device: torch.device, onnx_dir: str | Path | None = None,
                 precision: str | None = None, threads: int | None = None, streams: int | None = None,
                 cache_dir: str | Path | None = None, check_weights_match: bool = True):
        ov = _import_openvino()
        if device.type != "cpu":
            raise InputError(f"backend 'openvino' runs on the CPU, not on {device} (--device cpu)")
        dtype = next(model.parameters()).dtype
        precision = precision or DEFAULT_PRECISION[dtype]
        if precision not in PRECISIONS:
            raise InputError(f"backend 'openvino' option precision: {precision!r}; choose from {', '.join(PRECISIONS)}")
        threads = torch.get_num_threads() if threads is None else threads
        for key, value, low in (("threads", threads, 0), ("streams", streams, 1)):
            if value is not None and not low <= value <= 4096:
                raise InputError(f"backend 'openvino' option {key}: {value} is out of range {low}..4096")
        folder = onnx_folder(self.name, model, onnx_dir, cache_dir)
        self.model, self.device, self.config, self.onnx_dir = model, device, model.config, folder
        self.precision, self.threads, self.streams = precision, threads, streams or 1
        core = ov.Core()
        self.encoder = self._open(ov, core, folder, "encoder", model.encoder, check_weights_match)
        self.generator = self._open(ov, core, folder, "generator", model.generator, check_weights_match)

    def _open(self, ov, core, folder: Path, role: str, module, check_weights_match: bool) -> OpenVinoModel:
        graph = OpenVinoModel(ov, core, find_onnx(folder, role), self.precision, self.threads, self.streams)
        check_graph(graph.meta, graph.input_names, self.config, role, module, str(graph.path), check_weights_match)
        return graph

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder.run({"images": x}, x.dtype)

    def decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        maps = batch_noise(noise, styles.shape[0], self.config, torch.float32, styles.device)
        return self.generator.run({"styles": styles, **dict(zip(self.generator.input_names[1:], maps))}, styles.dtype)
