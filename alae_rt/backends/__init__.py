"""Backends: the two hot calls, `encode(x) -> w` and `decode(styles, noise) -> images`, behind one interface.

One module per backend (eager, compile, official, triton, onnxruntime, tensorrt, openvino); this one holds the registry.
The Runtime picks a backend once at load; the network code stays free of backend switches. Every backend
is tested against `eager` on the same inputs. A backend's options are its constructor's keyword arguments,
checked here, once, for all of them.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from alae_rt.errors import InputError
from alae_rt.network import StyleALAE


class Backend(Protocol):
    name: str

    def encode(self, x: Tensor) -> Tensor:
        """images [N, C, R, R] -> w [N, D]"""

    def decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        """styles [N, 2L, D], 2L noise maps ([1 or N, 1, h, w] or None) -> images [N, C, R, R]"""


BackendFactory = Callable[..., Backend]
# name -> "module:class"; a backend's module (and what it needs: triton, onnxruntime, tensorrt) is imported only
# when that backend is asked for. factory(model, device, **options): the model is already on the device, in the
# Runtime's dtype.
_BUILTIN = {
    "eager": "alae_rt.backends.eager:EagerBackend",
    "compile": "alae_rt.backends.compile:CompileBackend",
    "official": "alae_rt.backends.official:OfficialOrderBackend",  # the official code's op order: the baseline
    "triton": "alae_rt.backends.triton:TritonBackend",
    "onnxruntime": "alae_rt.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "alae_rt.backends.tensorrt:TensorRTBackend",
    "openvino": "alae_rt.backends.openvino:OpenVinoBackend",
}
_BACKENDS: dict[str, BackendFactory | str] = dict(_BUILTIN)


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make `Runtime.load(..., backend=name)` build `factory(model, device, **backend_options)`."""
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    return list(_BACKENDS)


def backend_factory(name: str) -> BackendFactory:
    """The factory registered under `name` (importing its module on first use)."""
    factory = _BACKENDS.get(name)
    if factory is None:
        raise InputError(f"unknown backend {name!r}; choose from auto, {', '.join(_BACKENDS)}")
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = _BACKENDS[name] = getattr(importlib.import_module(module), attr)
    return factory


def check_options(name: str, factory: BackendFactory, options: dict[str, Any]) -> None:
    """A backend's options are its constructor's keyword arguments (after model and device); a factory that
    takes **kwargs passes what it does not know on (compile: to torch.compile) and checks them itself."""
    params = list(inspect.signature(factory).parameters.values())[2:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in options if k not in known]
    if unknown:
        takes = f"it takes {', '.join(known)}" if known else "it takes none"
        raise InputError(f"backend {name!r} has no option(s) {', '.join(unknown)}; {takes} "
                         "(--backend-option KEY=VALUE)")
    for p in params:
        if p.name in options and not _fits(p.annotation, options[p.name]):
            raise InputError(f"backend {name!r} option {p.name}: expected {_type_text(p.annotation)}, got "
                             f"{options[p.name]!r} (--backend-option {p.name}=VALUE)")


# What an option's annotation asks of a value given from outside (a CLI string is converted to bool/int/float first).
_SIMPLE_TYPES = {
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "Path": lambda v: isinstance(v, (str, os.PathLike)),
    "None": lambda v: v is None,
}


def _type_text(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _fits(annotation: Any, value: Any) -> bool:
    """Whether `value` fits a simple annotation ("bool", "int | None", "str | Path | None"); others (lists, Any,
    unannotated) are the backend's own to check."""
    kinds = [k.strip() for k in _type_text(annotation).split("|")]
    if annotation is inspect.Parameter.empty or not all(k in _SIMPLE_TYPES for k in kinds):
        return True
    return any(_SIMPLE_TYPES[k](value) for k in kinds)


def auto_backend(device: torch.device, model: StyleALAE | None = None) -> str:
    """The fastest backend available for the device: triton on CUDA. On CPU, for models big enough that the choice
    matters (`COMPILE_MIN_GFLOPS` per decode and up), the fastest by measurement among the CPU backends that run
    in the model's precision (`measure_cpu_backends`, recorded per machine and model in the cache); eager for small
    ones, where exporting or compiling to find out would take longer than their work."""
    if device.type == "cuda":
        from alae_rt.kernels import triton_available

        return "triton" if triton_available() else "eager"
    if model is not None and _worth_measuring(model):
        return measure_cpu_backends(model)["choice"]
    return "eager"


def _worth_measuring(model: StyleALAE) -> bool:
    from alae_rt.flops import count_flops

    return count_flops(model.config)["decode"] >= COMPILE_MIN_GFLOPS * 1e9


# Decode cost per image from which `auto` measures on CPU: celeba-128 (9 GFLOPs) and up; the 128x128
# test fixtures (0.5 GFLOPs) and the bundled 64x64 model run eager.
COMPILE_MIN_GFLOPS = 2.0
AUTO_RECORD = "auto_backend.json"  # in alae_rt.backends.onnxruntime.cache_root(): what `auto` measured, per key


def cpu_candidates(model: StyleALAE) -> list[str]:
    """The CPU backends that can run this model in its dtype here: eager; compile with a C++ compiler; onnxruntime
    and openvino (in the dtype's precision) where they and the exporter are installed."""
    from alae_rt.backends.compile import cpp_compiler_available

    names = ["eager"] + (["compile"] if cpp_compiler_available() else [])
    exporter = importlib.util.find_spec("onnxscript") is not None
    fp32 = next(model.parameters()).dtype == torch.float32
    # onnxruntime's CPU provider runs the fp32 file: a candidate for fp32 Runtimes (for bf16 it would be slower
    # and hand back a different precision than asked)
    for name, module, wanted in (("onnxruntime", "onnxruntime", fp32), ("openvino", "openvino", True)):
        if wanted and exporter and importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


_ONNX_FILE_BACKENDS = ("onnxruntime", "openvino")


def _auto_options(name: str, model: StyleALAE, cache_dir: str | os.PathLike | None) -> dict[str, Any]:
    """What `auto` gives a backend it chose: the ONNX-file backends read the model's export in the cache."""
    if name not in _ONNX_FILE_BACKENDS:
        return {}
    from alae_rt.backends.onnxruntime import cache_root, onnx_folder

    return {"onnx_dir": onnx_folder(name, model, None, Path(cache_dir or cache_root()) / "onnx")}


def measure_cpu_backends(model: StyleALAE, candidates: list[str] | None = None, reps: int = 3,
                         cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Time each candidate's encode + decode of one image (interleaved, `reps` rounds, medians) on this model, in its
    dtype, and pick the fastest whose outputs are within the dtype's tolerance of eager's -> {"choice", "ms",
    "errors", "key"}.

    The result is recorded in the cache under a key of the CPU, the thread count, the architecture, the dtype, the
    weights and the libraries' versions: later loads read it instead of measuring again. The first measurement
    costs what the candidates cost to set up: onnxruntime and openvino export the model (into the cache, once),
    compile compiles it (inductor caches it on disk).
    """
    return _measure(model, candidates, reps, cache_dir)[0]


def _measure(model: StyleALAE, candidates: list[str] | None = None, reps: int = 3,
             cache_dir: str | os.PathLike | None = None) -> tuple[dict[str, Any], Backend | None]:
    """measure_cpu_backends, and the chosen backend when this call built it (None when the record was read)."""
    import json
    import statistics
    import time
    from importlib import metadata

    from alae_rt.backends.onnxruntime import cache_root, weights_hash
    from alae_rt.bench import cpu_model

    dtype = next(model.parameters()).dtype
    candidates = candidates or cpu_candidates(model)
    versions = {}
    for dist in ("torch", "onnxruntime", "openvino", "alae-rt"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    key = json.dumps({"cpu": cpu_model(), "threads": torch.get_num_threads(), "dtype": str(dtype),
                      "weights": weights_hash(model)[:24], "candidates": candidates, "versions": versions},
                     sort_keys=True)
    record_path = Path(cache_dir or cache_root()) / AUTO_RECORD
    try:
        records = json.loads(record_path.read_text())
    except (OSError, ValueError):
        records = {}
    if key in records and records[key].get("choice") in candidates:
        return records[key], None

    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(1, cfg.channels, cfg.resolution, cfg.resolution, generator=gen) * 2 - 1).to(dtype)
    styles = torch.randn(1, cfg.num_styles, cfg.latent_size, generator=gen).to(dtype)
    noise = [torch.randn(1, 1, r, r, generator=gen).to(dtype) for r in cfg.block_resolutions for _ in (1, 2)]
    tol = 1e-3 if dtype == torch.float32 else 3e-1  # a guard against a broken candidate, not a parity test
    runs, errors, ms = {}, {}, {}
    with torch.inference_mode():
        want = None
        for name in candidates:
            try:
                backend = create_backend(name, model, torch.device("cpu"), **_auto_options(name, model, cache_dir))
                out = (backend.encode(x).float(), backend.decode(styles, noise).float())  # the first calls compile
            except Exception as exc:  # an optional candidate that cannot run here (export, compiler) is passed over
                if name == "eager":
                    raise
                errors[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                warnings.warn(f"backend auto: {name} left out of the measurement ({errors[name]})", stacklevel=2)
                continue
            if want is None:
                want = out
            err = [float((a - b).abs().max() / b.abs().max().clamp_min(1.0)) for a, b in zip(out, want)]
            errors[name] = max(err)
            if errors[name] <= tol:
                runs[name], ms[name] = backend, []
        for _ in range(reps):
            for name, backend in runs.items():
                start = time.perf_counter()
                backend.encode(x)
                backend.decode(styles, noise)
                ms[name].append((time.perf_counter() - start) * 1e3)
    medians = {name: round(statistics.median(t), 2) for name, t in ms.items() if t}
    result = {"choice": min(medians, key=medians.get) if medians else "eager", "ms": medians, "errors": errors,
              "key": json.loads(key)}
    records[key] = result
    try:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = record_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(records, indent=1) + "\n")
        os.replace(tmp, record_path)
    except OSError:
        pass  # a read-only cache: measured again next time
    return result, runs.get(result["choice"])


def create_backend(name: str, model: StyleALAE, device: torch.device, **options: Any) -> Backend:
    """Build the named backend; "auto" picks the fastest one available for the device."""
    if name == "auto" and device.type == "cpu" and _worth_measuring(model):
        result, measured = _measure(model)
        if measured is not None and not options:
            return measured  # built and warmed up by the measurement
        name = result["choice"]
        options = {**_auto_options(name, model, None), **options}
    elif name == "auto":
        name = auto_backend(device, model)
    factory = backend_factory(name)
    check_options(name, factory, options)
    return factory(model, device, **options)
